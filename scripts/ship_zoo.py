"""Ship the zoo that a data stage trained: write it, with its provenance, to a folder to commit.

    python scripts/ship_zoo.py runs/zoo zoo/hopper-v5
    python scripts/rescore_network.py --index zoo/hopper-v5/index.json   # re-score it in a fresh process

The first argument is the run folder of the profile that trained the zoo (``--profile zoo`` runs
into ``runs/zoo``); its TD3 runs must live in a committed training folder (``data.training_dir``).
Other profiles then load the shipped zoo with ``data.zoo_source: zoo/hopper-v5``. See
:func:`nnae_utils.zoo.ship_zoo` for what is written.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nnae_utils.stages import STAGES_BY_NAME  # noqa: E402
from nnae_utils.zoo import ship_zoo  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="run folder of the profile that trained the zoo (e.g. runs/zoo)")
    parser.add_argument("destination", type=Path, help="folder to write the shipped zoo to (must not exist)")
    parser.add_argument("--command", default=None,
                        help="the command that trained the zoo (default: the pipeline's, for the run folder's profile)")
    args = parser.parse_args(argv)
    command = args.command or f"python -m nnae_utils.pipeline --profile {args.run_dir.name} --only data"
    out = ship_zoo(args.run_dir / STAGES_BY_NAME["data"].folder, args.destination, command=command)
    print(f"shipped {out}; re-score it with: python scripts/rescore_network.py --index {out / 'index.json'}")


if __name__ == "__main__":
    main()
