"""The README's shell blocks marked runnable work as written, from a fresh clone.

A block is runnable when the line before its opening fence is ``<!-- runnable -->``, e.g.::

    <!-- runnable -->
    ```bash
    source .venv/bin/activate
    modelfleet workspace create -n quickstart -p quickstart
    ```

Every shell block of the README must be marked: ``<!-- runnable -->``, or ``<!-- set-up -->``
for the one that holds the set-up and test commands themselves (CI runs the test command; it
is checked here to be the one ``.ci/run`` runs). Synopses (``[optional]`` parts, placeholders)
are ``text`` blocks, so no command shown in a shell block goes unrun.

Each runnable block runs with ``bash -euo pipefail`` in a fresh ``git clone`` of this
repository (its committed state) whose ``.venv`` is this checkout's (the README's set-up
command already run), with a PATH that does not hold the virtual environment (as a new shell
has it) and a HOME of its own. A README with no marked block fails: nothing would be checked.
Any local cluster a block leaves running is stopped afterwards.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MARKER = "<!-- runnable -->"
_FENCE = re.compile(r"^```(bash|sh|shell|console)?\s*$")


SET_UP = "<!-- set-up -->"


def unmarked_shell_blocks(readme: str) -> list[int]:
    """Line numbers of shell blocks with neither marker before them."""
    lines = readme.splitlines()
    fences = [i for i, line in enumerate(lines) if line.startswith("```")]
    openings = fences[::2]  # fences alternate: opening, closing
    return [
        i + 1
        for i in openings
        if (match := _FENCE.match(lines[i]))
        and match.group(1)
        and (lines[i - 1].strip() if i else "") not in (MARKER, SET_UP)
    ]


def runnable_blocks(readme: str) -> list[tuple[int, str]]:
    """(line number, text) of each block the marker precedes; a marker before anything but
    a shell block is an error."""
    lines = readme.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        opening = lines[i + 1] if i + 1 < len(lines) else ""
        match = _FENCE.match(opening)
        if not match or not match.group(1):
            raise AssertionError(f"README line {i + 1}: {MARKER} must come right before a ```bash block")
        end = next((j for j in range(i + 2, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise AssertionError(f"README line {i + 2}: the runnable block is never closed")
        blocks.append((i + 3, "\n".join(lines[i + 2 : end])))
    return blocks


def test_the_marker_parser_finds_only_marked_shell_blocks() -> None:
    text = f"intro\n```bash\nnot this\n```\n{MARKER}\n```bash\necho one\n```\n{MARKER}\n```sh\necho two\n```\n"
    assert runnable_blocks(text) == [(7, "echo one"), (11, "echo two")]
    with pytest.raises(AssertionError, match="right before"):
        runnable_blocks(f"{MARKER}\n```python\nprint()\n```\n")


def test_every_shell_block_of_the_readme_is_marked() -> None:
    readme = (REPO / "README.md").read_text()
    assert unmarked_shell_blocks(readme) == [], "mark these README shell blocks runnable, or make them text synopses"
    assert unmarked_shell_blocks("```bash\nls\n```\n```text\nmodelfleet [x]\n```\n") == [1]


def test_the_set_up_block_names_the_scripts_ci_runs() -> None:
    readme = (REPO / "README.md").read_text()
    lines = readme.splitlines()
    [at] = [i for i, line in enumerate(lines) if line.strip() == SET_UP]
    end = next(j for j in range(at + 2, len(lines)) if lines[j].startswith("```"))
    commands = [line.split("#")[0].strip() for line in lines[at + 2 : end] if line.split("#")[0].strip()]
    assert commands == ["./scripts/demo.sh", "./scripts/test.sh"]
    for command in commands:
        assert os.access(REPO / command, os.X_OK), f"{command} is not executable"
    assert "./scripts/test.sh" in (REPO / ".ci" / "run").read_text()


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    dest = root / "modelfleet"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(dest)], check=True, timeout=120)
    (dest / ".venv").symlink_to(REPO / ".venv")  # the set-up command's result
    if (REPO / ".venv-reference").exists():
        (dest / ".venv-reference").symlink_to(REPO / ".venv-reference")
    return dest


def _stop_clusters(clone: Path, env: dict[str, str]) -> None:
    for marker in clone.rglob(".modelfleet/workspace.json"):
        subprocess.run([str(REPO / ".venv" / "bin" / "modelfleet"), "-w", str(marker.parent.parent), "cluster", "stop"],
                       env=env, capture_output=True, timeout=120, check=False)  # fmt: skip


def test_readme_runnable_blocks_run_as_written(clone: Path) -> None:
    blocks = runnable_blocks((clone / "README.md").read_text())
    assert blocks, f"no README block is marked {MARKER!r}: mark the shell blocks a new user runs"
    venv_bin = str(REPO / ".venv" / "bin")
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    home = clone.parent / "home"
    home.mkdir(exist_ok=True)
    env = {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8", "TMPDIR": str(clone.parent)}
    try:
        for line, block in blocks:
            result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=clone, env=env,
                                    capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
            assert result.returncode == 0, (
                f"README block at line {line} failed ({result.returncode}):\n{block}\n"
                f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
            )
    finally:
        _stop_clusters(clone, env)
