"""Files on disk: atomic writes, atomic folder swaps, and JSON from numpy-laden results.

Every stage hands its results to the next through files, and runs are resumed after crashes, so a
file is either the old one or the new one, never half of each. One recipe for all of them:

- :func:`atomic_write` / :func:`atomic_write_path`: write a temp file in the same folder (so the
  rename cannot cross file systems), ``fsync`` it (so the rename cannot reach the disk before the
  bytes do), give it :data:`FILE_MODE` (``mkstemp`` makes files private; results are meant to be
  shared and re-scored by others), then ``os.replace`` it over the target.
- :func:`write_text`, :func:`write_json`: the same for text and JSON.
- :func:`swap_folder`: replace a whole folder by a staged one (a stage's artifacts, a checkpoint
  made of several files); a crash leaves either the old folder or the new one.
- :func:`jsonable`: the one JSON cleaner: numpy scalars and arrays to Python, paths to strings,
  optionally floats rounded and NaN/inf to ``null``.

Example:
    >>> import tempfile, numpy as np
    >>> folder = Path(tempfile.mkdtemp())
    >>> path = write_json(folder / "r.json", {"mean": np.float32(0.5), "n": np.int64(3)})
    >>> path.read_text()
    '{\\n "mean": 0.5,\\n "n": 3\\n}'
    >>> oct(path.stat().st_mode & 0o777)
    '0o644'
    >>> jsonable({"x": np.array([1.0, np.nan]), 2: 1 / 3}, digits=3, finite=True)
    {'x': [1.0, None], '2': 0.333}
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np

FILE_MODE = 0o644  # readable by everyone, as files written with open() under the usual umask


# --------------------------------------------------------------------------- atomic files


def atomic_write_path(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp)`` with the name of a temp file beside ``path``, then move it into place.

    For writers that take a file name (``safetensors.numpy.save_file``); :func:`atomic_write` hands
    over an open file instead. If ``write`` raises, the temp file is removed and ``path`` is untouched.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "a" / "x.txt"
        >>> atomic_write_path(p, lambda tmp: Path(tmp).write_text("hi")).read_text()
        'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` with a binary file open on a temp file beside ``path``, then move it into place.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "x.bin"
        >>> atomic_write(p, lambda f: f.write(b"abc")).read_bytes()
        b'abc'
    """

    def to_file(tmp: str) -> None:
        with open(tmp, "wb") as f:
            write(f)

    return atomic_write_path(path, to_file)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 1, digits: int | None = None,
               finite: bool = False) -> Path:
    """Write ``data`` as JSON atomically, cleaned by :func:`jsonable` (``digits``, ``finite`` as there).

    Example:
        >>> import tempfile
        >>> p = write_json(Path(tempfile.mkdtemp()) / "x.json", {"a": (1, 2)}, indent=None)
        >>> p.read_text()
        '{"a": [1, 2]}'
    """
    return write_text(path, json.dumps(jsonable(data, digits=digits, finite=finite), indent=indent))


# --------------------------------------------------------------------------- atomic folders


def swap_folder(staging: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Replace the folder ``final`` by ``staging`` (renamed to ``final``); return ``final``.

    ``final`` is first renamed to ``final.old``, then ``staging`` to ``final``, then ``final.old`` is
    deleted. A crash leaves ``final`` whole (old or new), or only ``final.old`` between the two renames,
    which a reader may fall back on (:func:`nnae_utils.cerl.load_checkpoint` does).

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = write_text(root / "out" / "a.txt", "old")
        >>> _ = write_text(root / "out.partial" / "a.txt", "new")
        >>> (swap_folder(root / "out.partial", root / "out") / "a.txt").read_text(), sorted(p.name for p in root.iterdir())
        ('new', ['out'])
    """
    staging, final = Path(staging), Path(final)
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    if old.exists():
        shutil.rmtree(old)
    return final


# --------------------------------------------------------------------------- JSON


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)``: a numpy scalar or array, or a path, as plain Python; else TypeError.

    Example:
        >>> json.dumps({"n": np.int64(2), "x": np.arange(2)}, default=json_default)
        '{"n": 2, "x": [0, 1]}'
    """
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def jsonable(obj: Any, *, digits: int | None = None, finite: bool = False) -> Any:
    """``obj`` with every numpy value and path made plain Python (:func:`json_default`), recursively.

    ``digits``: round floats to that many decimals (summaries: numbers a reader compares, not noise).
    ``finite``: NaN and infinities become ``None`` (strict JSON has no NaN; ``null`` reads as "no value");
    without it they stay floats, which ``json`` writes as ``NaN`` and reads back exactly (checkpoints).
    Dictionary keys become strings, as ``json`` writes them (but ``True`` as ``"True"``); other objects
    are left as they are, for ``json`` (or its ``default``) to deal with.

    Example:
        >>> jsonable({"x": [np.float32(0.25), float("inf")], "ok": np.bool_(True)}, finite=True)
        {'x': [0.25, None], 'ok': True}
    """
    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {k if isinstance(k, str) else str(clean(k)): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (np.bool_, np.integer, np.floating, np.ndarray, Path)):
            x = json_default(x)
            if isinstance(x, list):
                return [clean(v) for v in x]
        if isinstance(x, float):
            if finite and not math.isfinite(x):
                return None
            return round(x, digits) if digits is not None and math.isfinite(x) else x
        return x

    return clean(obj)
