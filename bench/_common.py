"""Helpers the bench scripts share: free ports, ``wrk`` pinned to a CPU and its output read,
CPU time and liveness from /proc, processes stopped by pid.

The scripts are run as ``python bench/X.py``, so this folder is on ``sys.path`` and they
import it as ``_common``. One copy here keeps their measurements alike: the same wrk command
line, the same reading of its latencies, the same CPU accounting.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

LATENCY_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel picks it), so that
    servers started by a bench never collide with each other or with other work."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- wrk -----------------------------------------------------------------------------------


def wrk_post_lua(body: str, headers: dict[str, str]) -> str:
    """A wrk Lua script that POSTs ``body`` as JSON with ``headers``: every bench sends the
    same kind of request, so they all write it the same way."""
    lines = ['wrk.method = "POST"', f"wrk.body = '{body}'", 'wrk.headers["Content-Type"] = "application/json"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    return "\n".join(lines) + "\n"


def wrk_argv(
    url: str, script: str | Path, connections: int, seconds: int, cpu: str = "0", extra: Sequence[str] = ()
) -> list[str]:
    """The wrk command line: one thread pinned to ``cpu`` with ``taskset`` (the system under
    test runs on another CPU), latency distribution on."""
    return [
        "taskset", "-c", cpu, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
        *extra, "--latency", "-s", str(script), url,
    ]  # fmt: skip


def wrk_latency_ms(out: str, pct: str, missing: float | None = None) -> float:
    """The ``pct`` latency (e.g. ``"50%"``) from wrk's ``--latency`` output, in ms. When the
    line is absent, ``missing`` if given, else ValueError (the output is quoted)."""
    m = re.search(rf"\b{re.escape(pct)}\s+([\d.]+)(us|ms|s)\b", out)
    if m is None:
        if missing is None:
            raise ValueError(f"no {pct} latency in wrk's output:\n{out}")
        return missing
    return float(m.group(1)) * LATENCY_UNITS_MS[m.group(2)]


def wrk_rps_p50(url: str, connections: int, seconds: int, script: str | Path) -> tuple[float, float, int]:
    """(requests/s, p50 ms, requests) from one wrk run pinned to CPU 0; errors wrk reports
    (non-2xx answers, socket errors) are printed to stderr, since they make the rate meaningless."""
    out = subprocess.run(wrk_argv(url, script, connections, seconds), capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = wrk_latency_ms(out, "50%", missing=math.nan)
    assert not math.isnan(p50), out
    if "Non-2xx" in out or "Socket errors" in out:
        print("  wrk reported errors:\n" + out, file=sys.stderr)
    return rps, p50, count


# -- /proc ---------------------------------------------------------------------------------


def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces and
    parentheses), so that field 0 is the state, 1 the parent pid, 11 utime, 12 stime."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_user_system(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` so far, its threads included."""
    fields = proc_stat(pid)
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pids: Iterable[int], skip_gone: bool = False) -> float:
    """User + system CPU seconds used so far by ``pids`` (their threads included; children
    that exited are not counted). A pid that is gone raises OSError unless ``skip_gone``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = proc_stat(pid)
        except OSError:
            if skip_gone:
                continue
            raise
        total += int(fields[11]) + int(fields[12])
    return total / tick


def machine() -> str:
    """The machine in one line, printed with every result: host, CPU, count, Python, OS."""
    cpu = cpu_model(platform.processor() or platform.machine())
    return f"{platform.node()} ({cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()})"


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages (the machine is shared: say how busy it was)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def cpu_model(default: str) -> str:
    """The CPU's model name from /proc/cpuinfo (``default`` where there is none), printed
    with every result: figures from different machines are not comparable."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return default


# -- stopping processes by pid -------------------------------------------------------------


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not): process trees a bench started are checked
    gone by pid, not by name, so nothing of anyone else's is touched."""
    try:
        state = proc_stat(pid)[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: Iterable[int], timeout: float) -> None:
    """Wait up to ``timeout`` seconds for every pid to stop running."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def kill_pids(pids: Iterable[int]) -> None:
    """SIGKILL every pid still running: the last resort when a graceful stop did not end
    what a bench started (a pid that is already gone is no error)."""
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
