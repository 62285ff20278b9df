"""The replica's output tee (``replica/logtee.py``): with ``MODELFLEET_LOG_TEE`` everything
written to fds 1 and 2 reaches both the process's own stdout (the container log) and the
pod-local files the ``ship`` sidecar uploads. Real subprocesses, no control plane."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

_CHILD = textwrap.dedent(
    """
    import os, sys
    from modelfleet.replica import logtee
    tee = logtee.start_from_env("pod-a", int(sys.argv[1]), int(sys.argv[2]))
    print("hello from print")
    os.write(2, b"raw on fd 2\\n")
    for i in range(int(sys.argv[3])):
        print(f"line {i:04d} " + "x" * 40)
    sys.stdout.write("no newline at the end")
    raise RuntimeError("told to fail")
    """
)


def _run(
    tmp_path: Path, max_bytes: int, backups: int, lines: int, env_on: bool = True
) -> subprocess.CompletedProcess[bytes]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    if env_on:
        env["MODELFLEET_LOG_TEE"] = str(tmp_path / "logs")
    return subprocess.run(
        [sys.executable, "-c", _CHILD, str(max_bytes), str(backups), str(lines)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=60,
    )


def test_output_goes_to_stdout_and_to_the_file(tmp_path: Path):
    done = _run(tmp_path, 1 << 20, 3, 5)
    assert done.returncode == 1
    out = done.stdout
    for part in (b"hello from print\n", b"raw on fd 2\n", b"line 0004 ", b"RuntimeError: told to fail"):
        assert part in out
    files = sorted((tmp_path / "logs" / "pod-a").iterdir())
    assert [f.name for f in files] == ["000001.log"]
    text = files[0].read_bytes()
    assert text.startswith(b"hello from print\n") and b"raw on fd 2\n" in text
    assert b"Traceback (most recent call last)" in text and b"RuntimeError: told to fail\n" in text
    assert b"no newline at the end" in text and text.endswith(b"\n")  # completed at exit: shipped whole
    # stdout has the same bytes (the file's closing newline aside)
    assert text.rstrip(b"\n") == out.rstrip(b"\n")

    # a second start (a restarted container) writes a new file; the first one stays
    _run(tmp_path, 1 << 20, 3, 1)
    assert [f.name for f in sorted((tmp_path / "logs" / "pod-a").iterdir())] == ["000001.log", "000002.log"]


def test_files_roll_over_at_line_ends_and_old_ones_go(tmp_path: Path):
    done = _run(tmp_path, 1000, 2, 200)  # ~10 KB of 50-byte lines: ~10 files, 3 kept
    files = sorted((tmp_path / "logs" / "pod-a").iterdir())
    assert len(files) == 3, [f.name for f in files]
    seqs = [int(f.stem) for f in files]
    assert seqs == list(range(seqs[0], seqs[0] + 3)) and seqs[0] > 1
    for f in files:
        data = f.read_bytes()
        assert data.endswith(b"\n")  # no line split over two files
        assert len(data) <= 1000
    joined = b"".join(f.read_bytes() for f in files)
    assert done.stdout.rstrip(b"\n").endswith(joined.rstrip(b"\n"))  # the last lines, in order


def test_without_the_variable_nothing_is_written(tmp_path: Path):
    done = _run(tmp_path, 1 << 20, 3, 1, env_on=False)
    assert b"hello from print" in done.stdout and b"told to fail" in done.stdout
    assert not (tmp_path / "logs").exists()
