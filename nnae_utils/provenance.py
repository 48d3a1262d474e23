"""What every artifact records about how it was made: software versions, code revision, machine.

Example:
    >>> sorted(runtime_versions())[:3]
    ['gymnasium', 'mujoco', 'numpy']
"""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def runtime_versions() -> dict[str, str]:
    """Versions of the software a result depends on."""
    import gymnasium
    import mujoco
    import numpy
    import torch

    return {
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "gymnasium": gymnasium.__version__,
        "mujoco": mujoco.__version__,
    }


def code_revision() -> str:
    """The git commit of the package's checkout (with ``+dirty`` for uncommitted changes), if any."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "nnae_utils"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if rev.returncode != 0:
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine() -> dict[str, object]:
    """The machine a result was measured on (speed figures are meaningless without it)."""
    return {"cores": os.cpu_count(), "platform": platform.platform(), "processor": platform.machine(), "cpu": cpu_model()}


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name, family, model and widest vector extension (Linux: /proc/cpuinfo), else what
    ``platform`` knows: ``'AMD EPYC (family 25, model 1, avx2)'``.

    Episode returns are bitwise reproducible with the same CPU kernels only (numpy's linear algebra
    picks its kernels per CPU unless capped, :data:`nnae_utils.backends.PORTABLE_KERNELS`; Hopper turns
    a last-bit difference into another episode), so results name the CPU.
    """
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name")
    if not name:
        return platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    simd = next((f for f in ("avx512f", "avx2", "avx", "sse4_2") if f in flags), None)
    details = [f"family {fields['cpu family']}" if "cpu family" in fields else None,
               f"model {fields['model']}" if "model" in fields else None, simd]
    details = [d for d in details if d]
    return f"{name} ({', '.join(details)})" if details else name
