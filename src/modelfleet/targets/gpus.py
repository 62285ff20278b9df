"""This machine's NVIDIA GPUs, handed out whole to local replicas.

``gpu_cores`` is a number of devices per replica (v1's meaning). The control plane's room check
(``control/room.py``) counts them against ``gpu_count()``; the local target takes each
replica's devices from a ``GpuPool`` at its first launch, keeps them across restarts, gives
them back when it stops, and passes them in ``CUDA_VISIBLE_DEVICES`` (an empty value where the
replica asked for none, so it cannot take another's). Found with ``nvidia-smi -L``; a machine
without it has none.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess

GPUS_ENV = "MODELFLEET_GPUS"  # in a plan's environment: devices per replica (control/layout.py)


def gpu_count() -> int:
    """The NVIDIA GPUs ``nvidia-smi -L`` lists (0 without nvidia-smi or when it fails)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10, check=False)
        if out.returncode == 0:
            return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    return 0


class GpuPool:
    """Device indices 0..count-1, each held by at most one replica."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._free = list(range(count))

    def take(self, n: int) -> tuple[int, ...] | None:
        """``n`` free devices (lowest first), or None when fewer are free."""
        if n > len(self._free):
            return None
        taken, self._free = tuple(self._free[:n]), self._free[n:]
        return taken

    def give(self, devices: tuple[int, ...]) -> None:
        self._free = sorted(set(self._free) | set(devices))

    @property
    def free(self) -> int:
        return len(self._free)
