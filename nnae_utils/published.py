"""Results of runs too long for the book's own profile, committed to the repository.

The book is built from the ``default`` run, about an hour on 2 cores. The ``long`` run takes
core-hours in the background; its results are *published*: the small files of each finished
stage (``summary.json``, the ``.csv`` tables and curves, the stage record with every parameter,
and the networks it scored: ``champions/``, ``migrants/``; of stage 2, the autoencoders later stages
load: :data:`STAGE_FOLDERS`) are copied into
``results/<profile>/<stage folder>/``, with a ``published.json`` that names the command, the date,
the code revision and software versions that computed the stage (from its summary), the revision
that published it, and the stage's wall time. The stage notebooks show a
published run beside their own, labeled with its profile and budget.

A stage that takes several sessions can outlive its machine. Its finished runs are *carried*:
copied, without what only served to continue them (learners, replay buffers), into
``results/<profile>/_carried/<stage folder>/`` and committed; on a new machine ``--restore`` puts
them back, with every published stage as the upstream input of later ones, so the stage
recomputes only the runs that had not finished.

Command line::

    python -m nnae_utils.published runs/long              # publish stages 4 and 5 of runs/long
    python -m nnae_utils.published runs/long --stages latent_evolution
    python -m nnae_utils.published runs/long --stages layer_autoencoders   # what later stages load, for --restore
    python -m nnae_utils.published runs/long --carry      # commit stage 5's finished runs (still running)
    python -m nnae_utils.published runs/long --restore    # a new machine: put back what results/long holds

Example:
    >>> import tempfile, json
    >>> run = Path(tempfile.mkdtemp()) / "long"
    >>> (run / "04_latent_evolution").mkdir(parents=True)
    >>> _ = (run / "04_latent_evolution" / "summary.json").write_text(json.dumps({"budget_steps": 10}))
    >>> _ = (run / "04_latent_evolution" / "states.npz").write_bytes(b"big, not published")
    >>> root = Path(tempfile.mkdtemp())
    >>> [p.name for p in publish(run, stages=["latent_evolution"], root=root, command="test")]
    ['04_latent_evolution']
    >>> sorted(p.name for p in (root / "long" / "04_latent_evolution").iterdir())
    ['published.json', 'summary.json']
    >>> load("long", "04_latent_evolution", root=root).summary["budget_steps"]
    10
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from .io import swap_folder
from .provenance import code_revision, machine, runtime_versions
from .results import iter_results
from .stages import STAGES_BY_NAME

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PUBLISHED_ROOT = PROJECT_ROOT / "results"
META_FILE = "published.json"
TABLE_SUFFIXES = (".json", ".csv")
NETWORK_FOLDERS = ("champions", "migrants")
"""Folders of networks in the suite's format that a stage scored (re-scorable from the repository)."""
STAGE_FOLDERS = {"layer_autoencoders": ("autoencoders", "pca")}
"""Folders a stage publishes instead of :data:`NETWORK_FOLDERS`. Stage 2 scores no network of its own;
what later stages load from it (the main autoencoders and the PCA codes at the same size) is published
so that a new machine restores them (:func:`restore`) instead of retraining them: an hour on 2 cores for
the ``long`` profile, and the runs of stage 5 that evolve in the latent space resume only with the very
autoencoders that started them (their fingerprint hashes the decoder)."""
DEFAULT_STAGES = ("latent_evolution", "cerl_comparison")
"""The stages whose long runs the book shows beside the default run's (their outputs are small)."""
MAX_BYTES = 40 * 2**20
"""A published stage larger than this is refused: the repository holds summaries, not run folders."""
CARRIED = "_carried"
"""Folder of ``results/<profile>/`` that holds the finished runs of stages still computing (:func:`carry`)."""
CARRIED_STAGES = ("cerl_comparison",)
"""Stages whose finished runs can be carried: a run costs a core-quarter-hour or more, and is small once
its learners and replay buffer are left behind (:data:`nnae_utils.cerl.FINISHED_RUN_FILES`)."""
RESTORED_FROM = "restored_from"
"""Key of a stage record (``stage.json``) that :func:`restore` copied from a publication, not computed."""


def publish(run_dir: str | os.PathLike, *, stages: Sequence[str] = DEFAULT_STAGES, profile: str | None = None,
            root: str | os.PathLike = PUBLISHED_ROOT, command: str | None = None, resumed: bool = False) -> list[Path]:
    """Copy the small results of every finished stage of ``run_dir`` into ``root/<profile>/<folder>``.

    ``profile`` defaults to the run folder's name (``runs/long`` -> ``long``). A stage with no
    ``summary.json`` (not finished) is skipped; one whose files exceed :data:`MAX_BYTES` is refused
    before anything is written. An earlier publication of the same stage is replaced as a whole.

    ``resumed``: the stages resumed from checkpoints that earlier sessions wrote, so the wall time the
    run folder recorded covers only their last session. It is then published as
    ``last_session_wall_seconds`` and ``stage_wall_seconds`` is null: no stage wall time was measured.
    """
    run_dir, root = Path(run_dir), Path(root)
    profile = profile or run_dir.name
    unknown = [s for s in stages if s not in STAGES_BY_NAME]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages: {list(STAGES_BY_NAME)}")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    plans = []
    for name in stages:
        source = run_dir / STAGES_BY_NAME[name].folder
        record = _record(source)
        if not (source / "summary.json").is_file() or record.get(RESTORED_FROM):
            continue  # not finished, or a copy of a publication (restore), not something this run computed
        files = [p for p in source.iterdir() if p.is_file() and p.suffix in TABLE_SUFFIXES]
        files += [p for folder in STAGE_FOLDERS.get(name, NETWORK_FOLDERS) if (source / folder).is_dir()
                  for p in _files_under(source / folder)]
        size = sum(p.stat().st_size for p in files)
        if size > MAX_BYTES:
            raise ValueError(f"{source}: {size / 2**20:.0f} MiB to publish, more than {MAX_BYTES / 2**20:.0f} MiB")
        plans.append((name, source, files, _stage_wall_seconds(run_dir, name, record)))
    written = []
    for name, source, files, wall in plans:
        dest = root / profile / source.name
        summary = json.loads((source / "summary.json").read_text())
        meta = {
            "profile": profile, "stage": name, "run_dir": str(run_dir),
            "command": command or " ".join([Path(sys.executable).name, "-m", "nnae_utils.published", *sys.argv[1:]]),
            "published": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "stage_wall_seconds": None if resumed else wall,
            "resumed": resumed,
            "last_session_wall_seconds": wall if resumed else None,
            # what computed the stage, as its summary recorded it (the publishing checkout may be newer)
            "code_revision": summary.get("code_revision") or code_revision(),
            "versions": summary.get("versions") or runtime_versions(), "machine": summary.get("machine") or machine(),
            "published_by_revision": code_revision(),
        }
        _copy_replacing(files, source, dest, written_too={META_FILE: meta})
        shutil.rmtree(root / profile / CARRIED / source.name, ignore_errors=True)  # the finished stage replaces them
        written.append(dest)
    return written


def _record(stage_folder: Path) -> dict[str, Any]:
    path = stage_folder / "stage.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _copy_replacing(files: Sequence[Path], source: Path, dest: Path,
                    written_too: Mapping[str, Any] | None = None) -> None:
    """Copy ``files`` (under ``source``) to the same places under ``dest``, which is replaced as a whole; the
    JSON files ``written_too`` (name: data) are written with them, over a copied file of the same name."""
    staging = dest.with_name(dest.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for path in files:
        target = staging / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    for name, data in (written_too or {}).items():
        (staging / name).write_text(json.dumps(data, indent=1))
    swap_folder(staging, dest)  # a crash leaves the old copy or the new one, never neither


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def carry(run_dir: str | os.PathLike, *, stage: str = "cerl_comparison", profile: str | None = None,
          root: str | os.PathLike = PUBLISHED_ROOT) -> Path | None:
    """Copy the finished runs of ``stage`` from ``run_dir``'s scratch space (``_work/<stage>``) into
    ``root/<profile>/_carried/<stage folder>/``, replacing what was carried before; None if none has finished.

    Only what gives a finished run's result again is copied (:data:`nnae_utils.cerl.FINISHED_RUN_FILES`),
    and no more than :data:`MAX_BYTES`. Commit the folder; :func:`restore` puts the runs back on another
    machine, where the stage then recomputes only the others. :func:`publish` drops it once the stage is published.
    """
    from .cerl import FINISHED_RUN_FILES, finished_runs

    if stage not in CARRIED_STAGES:
        raise ValueError(f"stage {stage!r} has no runs to carry; stages that have: {list(CARRIED_STAGES)}")
    run_dir, root = Path(run_dir), Path(root)
    work = run_dir / "_work" / stage
    runs = finished_runs(work) if work.is_dir() else []
    if not runs:
        return None
    files = []
    for run in runs:
        for name in FINISHED_RUN_FILES:
            path = run / name
            files += [path] if path.is_file() else _files_under(path)
    size = sum(p.stat().st_size for p in files)
    if size > MAX_BYTES:
        raise ValueError(f"{work}: {size / 2**20:.0f} MiB of finished runs, more than {MAX_BYTES / 2**20:.0f} MiB")
    dest = root / (profile or run_dir.name) / CARRIED / STAGES_BY_NAME[stage].folder
    _copy_replacing(files, work, dest)
    return dest


def restore(run_dir: str | os.PathLike, *, profile: str | None = None,
            root: str | os.PathLike = PUBLISHED_ROOT) -> list[Path]:
    """On a machine that lacks ``run_dir``, put back what ``root/<profile>`` holds of it; return what was written.

    - every published stage whose folder in ``run_dir`` has no stage record: a copy of its publication,
      whose stage record says ``restored_from``, as the input of later stages (it is never published again);
    - every carried run (:func:`carry`) that the stage's scratch space lacks.
    """
    run_dir, root = Path(run_dir), Path(root)
    published = root / (profile or run_dir.name)
    if not published.is_dir():
        raise FileNotFoundError(f"nothing is published for {run_dir}: {published} does not exist")
    written = []
    for stage in STAGES_BY_NAME.values():
        source, dest = published / stage.folder, run_dir / stage.folder
        if not (source / "stage.json").is_file() or (dest / "stage.json").is_file():
            continue
        record = {**_record(source), RESTORED_FROM: _relative(source),
                  "published_digest": digest(published.name, stage.folder, root=root)}
        _copy_replacing(_files_under(source), source, dest, written_too={"stage.json": record})
        written.append(dest)
    for stage in CARRIED_STAGES:
        carried = published / CARRIED / STAGES_BY_NAME[stage].folder
        for run in sorted(p for p in carried.iterdir() if p.is_dir()) if carried.is_dir() else []:
            dest = run_dir / "_work" / stage / run.name
            if not dest.exists():
                _copy_replacing(_files_under(run), run, dest)
                written.append(dest)
    return written


def _stage_wall_seconds(run_dir: Path, name: str, record: Mapping[str, Any]) -> float | None:
    """The stage's wall time as its stage record (``stage.json``) gives it, else the run's ``timings.json``."""
    wall = record.get("wall_seconds")
    if wall is not None:
        return wall
    timings = run_dir / "timings.json"
    return (json.loads(timings.read_text()).get(name) or {}).get("wall_seconds") if timings.is_file() else None


@dataclass(frozen=True)
class PublishedStage:
    """One published stage: its summary, its stage record and its publication record."""

    profile: str
    folder: Path
    summary: Mapping[str, Any]
    meta: Mapping[str, Any]

    @property
    def params(self) -> Mapping[str, Any]:
        """The stage's parameters as the run recorded them (``stage.json``), or {}."""
        path = self.folder / "stage.json"
        return json.loads(path.read_text()).get("params", {}) if path.is_file() else {}

    def csv(self, name: str) -> pd.DataFrame:
        return pd.read_csv(self.folder / name)

    def caption(self) -> str:
        """One sentence naming the profile, its scale and where the numbers come from."""
        s, wall, last = self.summary, self.meta.get("stage_wall_seconds"), self.meta.get("last_session_wall_seconds")
        scale = [f"{s['n_seeds']} seeds" if "n_seeds" in s else None,
                 f"{s['budget_steps']:,} env steps per run" if "budget_steps" in s else None,
                 f"stage wall time {_duration(wall)}" if wall else None,
                 "resumed from checkpoints over several sessions, so no stage wall time was measured"
                 + (f" (its last session took {_duration(last)})" if last else "") if self.meta.get("resumed") else None,
                 # stage 4 keeps each run's wall seconds over all its sessions (evolution.ComputeClock)
                 f"evolution time summed over every session {_duration(s['evolution_all_sessions_seconds'])}"
                 if s.get("evolution_all_sessions_seconds") and s.get("runs_with_compute_seconds") == s.get("n_runs")
                 else None]
        return (f"The `{self.profile}` profile's run ({', '.join(x for x in scale if x)}), computed by "
                f"code revision `{str(self.meta.get('code_revision', '?'))[:12]}`, published "
                f"{str(self.meta.get('published', '?'))[:10]} into `{self._relative()}`.")

    def title(self) -> str:
        """A figure title: ``'profile long: 5 seeds, 1,000,000 env steps per run'``."""
        return f"profile {self.profile}: {self.summary['n_seeds']} seeds, {self.summary['budget_steps']:,} env steps per run"

    def _relative(self) -> str:
        return _relative(self.folder)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def load(profile: str, stage_folder: str, *, root: str | os.PathLike = PUBLISHED_ROOT) -> PublishedStage | None:
    """The published results of ``profile``'s stage ``stage_folder`` (e.g. ``04_latent_evolution``), or None."""
    folder = Path(root) / profile / stage_folder
    if not (folder / "summary.json").is_file() or not (folder / META_FILE).is_file():
        return None
    return PublishedStage(profile, folder, json.loads((folder / "summary.json").read_text()),
                          json.loads((folder / META_FILE).read_text()))


def beside_sentence(profile: str, stage: PublishedStage | None) -> str:
    """What a chapter says of ``profile``'s published run of its stage (``stage``, from :func:`load`):
    its caption and computed verdicts, or that nothing is published (or that no profile is named)."""
    if not profile:
        return "This chapter shows no other profile's run (`shown_beside` is empty)."
    if stage is None:
        return f"No run of the `{profile}` profile has been published for this stage yet."
    return stage.caption() + " Its verdicts: " + " ".join(stage.summary.get("verdicts", {}).values())


def beside(profile: str, stage_folder: str, *, predates: str = "",
           root: str | os.PathLike = PUBLISHED_ROOT) -> tuple[str, PublishedStage | None]:
    """The published run of ``profile`` a chapter shows beside its own (None: none named or published), and
    what the chapter says of it (:func:`beside_sentence`, then ``predates`` when that run's summary predates
    exact starts: it has no ``primary`` block)."""
    stage = load(profile, stage_folder, root=root) if profile else None
    sentence = beside_sentence(profile, stage)
    if stage is not None and "primary" not in stage.summary and predates:
        sentence += " " + predates
    return sentence, stage


def digest(profile: str, stage_folder: str, *, root: str | os.PathLike = PUBLISHED_ROOT) -> str:
    """A hash of every published file of ``profile``'s stage (empty string: nothing published)."""
    import hashlib

    folder = Path(root) / profile / stage_folder
    if not folder.is_dir():
        return ""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def results_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """The final-score table of a stage 4 or 5 summary: IQM and mean with their CIs, steps to each level."""
    def interval(d: Mapping[str, float]) -> str:
        return f"{d['point']:.0f} [{d['low']:.0f}, {d['high']:.0f}]"

    rows = []
    for start, label, entry in iter_results(summary.get("results", {})):  # {start: {label: entry}}, or older "start|label" keys
        row = {"start": start, "label": label, "runs": entry["runs"], "IQM [95% CI]": interval(entry["iqm"]),
               "mean [95% CI]": interval(entry["mean"])}
        row.update({k.removeprefix("steps_to "): v["text"] for k, v in entry.items() if k.startswith("steps_to ")})
        if entry.get("core_hours") is not None:
            row["core-hours"] = round(entry["core_hours"], 2)
        rows.append(row)
    return pd.DataFrame(rows).set_index(["start", "label"]) if rows else pd.DataFrame()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run folder, e.g. runs/long")
    parser.add_argument("--stages", nargs="+", default=list(DEFAULT_STAGES), help="stage names")
    parser.add_argument("--profile", default=None, help="name to publish under (default: the run folder's name)")
    parser.add_argument("--resumed", action="store_true",
                        help="the stages resumed from earlier sessions' checkpoints: their recorded wall time is the "
                             "last session's only, published as such (no stage wall time)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--carry", action="store_true",
                        help="instead: copy the finished runs of the stages still computing into results/<profile>/_carried/")
    action.add_argument("--restore", action="store_true",
                        help="instead: put back into a new machine's run folder the published stages and carried runs")
    args = parser.parse_args(argv)
    if args.restore:
        for path in restore(args.run_dir, profile=args.profile):
            print(f"restored {path}")
        return 0
    if args.carry:
        for stage in [s for s in args.stages if s in CARRIED_STAGES] or list(CARRIED_STAGES):
            dest = carry(args.run_dir, stage=stage, profile=args.profile)
            print(f"carried {dest}" if dest else f"no run of stage {stage} has finished in {args.run_dir}")
        return 0
    written = publish(args.run_dir, stages=args.stages, profile=args.profile, resumed=args.resumed)
    for path in written:
        print(f"published {path}")
    if not written:
        print(f"nothing to publish: no stage of {args.stages} has finished in {args.run_dir}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
