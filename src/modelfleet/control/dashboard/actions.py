"""The dashboard's two buttons, carried out by the CLI itself.

"Regenerate key" and "Set replicas" must act exactly as ``modelfleet service regen-key`` and
``modelfleet service update`` do: the SDK writes the workspace, then the admin API's sync
reconciles the service. The daemon sits below the SDK in the package layers, so instead of
a second implementation it runs that command, as a user would, and reports its outcome.
The command calls back into this daemon's admin API; it runs as a subprocess while the
event loop stays free to answer it.

Set replicas: with autoscaling on, ``N`` sets the autoscaler's minimum and maximum to N, so
that the autoscaler does not undo it; with autoscaling off, it sets ``num_replicas``.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

from modelfleet.errors import ConfigError

__all__ = ["ActionResult", "regen_key_argv", "replicas_argv", "run_cli"]

KEYS = ("Primary", "Secondary")
MAX_REPLICAS = 1000  # a bound for the form; the spec's own rules still apply
CLI_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ActionResult:
    ok: bool
    message: str


def regen_key_argv(service: str, key: object) -> list[str]:
    if key not in KEYS:
        raise ConfigError(f"key must be one of {', '.join(KEYS)} (got {key!r})")
    return ["service", "regen-key", "-n", service, "-k", str(key)]


def replicas_argv(service: str, replicas: object, autoscale: bool) -> list[str]:
    if not isinstance(replicas, int) or isinstance(replicas, bool) or not 1 <= replicas <= MAX_REPLICAS:
        raise ConfigError(f"replicas must be a whole number from 1 to {MAX_REPLICAS} (got {replicas!r})")
    n = str(replicas)
    flags = ["--autoscale-min-replicas", n, "--autoscale-max-replicas", n] if autoscale else ["--num-replicas", n]
    return ["service", "update", "-n", service, *flags, "--no-wait"]


async def run_cli(workspace: Path, argv: list[str], timeout_s: float = CLI_TIMEOUT_S) -> ActionResult:
    """Run ``modelfleet -w WORKSPACE ARGV``; its last stderr line is the message on failure."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "modelfleet",
        "-w",
        str(workspace),
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return ActionResult(False, f"`modelfleet {' '.join(argv[:2])}` did not finish within {timeout_s:.0f} s")
    if proc.returncode == 0:
        return ActionResult(True, out.decode(errors="replace").strip().splitlines()[-1:][0] if out.strip() else "done")
    lines = err.decode(errors="replace").strip().splitlines()
    return ActionResult(False, lines[-1].removeprefix("error: ") if lines else f"exit status {proc.returncode}")
