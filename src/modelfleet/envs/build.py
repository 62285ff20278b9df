"""Finding an environment in the caches, and building it on a miss.

``resolve(spec, settings)`` looks the canonical hash up in the workspace cache, then in the
machine-wide cache (linking a hit into the workspace), and builds on a miss, into the
machine cache when there is one. A spec with no packages and no Python version is "this
interpreter": nothing is built; one with ``python_executable`` is that interpreter as it
is (v1's user-managed dependencies).

Building holds ``<cache>/.locks/<hash>.lock`` (an flock: two deploys, in one daemon or two,
that need the same new environment build it once, and the second finds it), then:

1. ``uv venv --relocatable`` into ``<cache>/.tmp-<hash>-<pid>-<random>``;
2. copy the runtime part of modelfleet into ``<env>/modelfleet-runtime/modelfleet``, point a
   ``.pth`` at that folder, and ``uv pip install`` the requirements together with the
   runtime's packages (one resolve, so a user's pin and the runtime's needs are solved
   together);
3. import the replica runtime with the new interpreter (the contract with ``replica/``);
4. write ``modelfleet-env.json`` and rename the folder to ``<cache>/<hash>``.

A failure anywhere removes the temporary folder, so ``<cache>/<hash>`` exists only complete
(the rename is atomic), and raises ``BuildError`` with the tail of the installer's output;
all of it went to ``log``. Each finished build appends one line to ``<cache>/builds.jsonl``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from packaging.requirements import InvalidRequirement, Requirement

from modelfleet.envs.canonical import FORMAT, Canonical, canonicalize, copy_runtime, install_file, needs_build
from modelfleet.errors import BuildError
from modelfleet.spec import EnvironmentSpec

METADATA = "modelfleet-env.json"
RUNTIME_DIR = "modelfleet-runtime"
JOURNAL = "builds.jsonl"

# Workspace settings (Store.get_setting) that configure the builder.
SETTING_MACHINE_CACHE = "envs.machine_cache"  # folder; "none" turns the machine-wide cache off
SETTING_FIND_LINKS = "envs.find_links"  # folders of wheels offered to every build, os.pathsep-separated
SETTING_OFFLINE = "envs.offline"  # "true": no index, no network (wheels from find_links and uv's cache)
SETTING_UV_CACHE = "envs.uv_cache"  # uv's own download cache (default: uv's)

_SUMMARY = re.compile(r"^(Resolved|Prepared|Installed|Uninstalled|Audited|Downloading|Building|Built) ")
_BUILD_STEPS = 5


@dataclass(frozen=True)
class CacheSettings:
    """Where environments live and how builds reach packages; built at the edge and passed in."""

    workspace_cache: Path
    machine_cache: Path | None
    find_links: tuple[str, ...] = ()
    offline: bool = False
    uv_cache: Path | None = None
    uv: str | None = None  # the uv executable; None: the one the ``uv`` package ships, else PATH's

    @classmethod
    def from_workspace(
        cls, get_setting: Callable[[str], str | None], workspace_root: Path, home: Path
    ) -> CacheSettings:
        """Settings stored in a workspace (``SETTING_*``), with the documented defaults:
        ``<workspace>/.modelfleet/envs`` and ``<home>/.cache/modelfleet/envs``."""
        machine = get_setting(SETTING_MACHINE_CACHE)
        if machine is None:
            machine_cache: Path | None = home / ".cache" / "modelfleet" / "envs"
        elif machine.strip().lower() in ("", "none", "off"):
            machine_cache = None
        else:
            machine_cache = Path(machine).expanduser()
        links = get_setting(SETTING_FIND_LINKS) or ""
        uv_cache = get_setting(SETTING_UV_CACHE)
        return cls(
            workspace_cache=workspace_root / ".modelfleet" / "envs",
            machine_cache=machine_cache,
            find_links=tuple(p for p in links.split(os.pathsep) if p),
            offline=(get_setting(SETTING_OFFLINE) or "").lower() in ("1", "true", "yes"),
            uv_cache=Path(uv_cache).expanduser() if uv_cache else None,
        )

    @property
    def build_cache(self) -> Path:
        """Where a miss is built: the machine cache when there is one, so other workspaces reuse it."""
        return self.machine_cache or self.workspace_cache


# --------------------------------------------------------------------------- resolving


@dataclass(frozen=True)
class Step:
    """One line of progress: step ``step`` of ``steps``; ``detail`` lines are installer output."""

    step: int
    steps: int
    message: str
    detail: bool = False


Progress = Callable[[Step], None]


@dataclass(frozen=True)
class Resolved:
    python: str  # the interpreter replicas run with
    hash: str | None  # None: not a built environment
    path: Path | None  # the environment's folder (its real location)
    source: str  # "interpreter" | "user-managed" | "workspace" | "machine" | "built"


def resolve(
    spec: EnvironmentSpec,
    settings: CacheSettings,
    *,
    log: IO[str] | None = None,
    progress: Progress | None = None,
) -> Resolved:
    """The interpreter for ``spec``: found in a cache or built (see the module docstring).
    ``log`` receives everything the installer prints; ``progress`` one ``Step`` per step."""
    report = _Reporter(log, progress)
    if spec.python_executable is not None:
        _check_user_managed(spec)
        report.step(1, 1, f"environment {spec.name!r}: user-managed interpreter {spec.python_executable}")
        return Resolved(spec.python_executable, None, None, "user-managed")
    if not needs_build(spec):
        report.step(1, 1, f"environment {spec.name!r}: no packages asked for; this interpreter ({sys.executable})")
        return Resolved(sys.executable, None, None, "interpreter")
    canon = canonicalize(spec)
    short = canon.hash[:12]
    if canon.dropped:
        report.line(f"left out {', '.join(canon.dropped)}: modelfleet's replica runtime serves instead")
    hit = _lookup(canon.hash, settings)
    if hit is not None:
        path, where = hit
        report.step(1, 1, f"environment {spec.name!r} ({short}) found in the {where} cache: {path}")
        return Resolved(_python(path), canon.hash, path, where)
    report.step(1, _BUILD_STEPS, f"environment {spec.name!r} ({short}) not cached; building it with uv")
    path, built = _build(spec, canon, settings, report)
    if settings.machine_cache is not None and path.parent == settings.machine_cache:
        _link(path, settings.workspace_cache)
    return Resolved(_python(path), canon.hash, path, "built" if built else "machine")


def _python(env: Path) -> str:
    return str(env / "bin" / "python")


def usable(env: Path) -> bool:
    """A complete environment whose interpreter still exists."""
    return (env / METADATA).is_file() and (env / "bin" / "python").exists()


def _lookup(digest: str, settings: CacheSettings) -> tuple[Path, str] | None:
    entry = settings.workspace_cache / digest
    if usable(entry):
        return entry.resolve(), "workspace"
    if settings.machine_cache is not None:
        entry = settings.machine_cache / digest
        if usable(entry):
            with _locked(settings.machine_cache / ".locks" / f"{digest}.lock"):  # not while it is pruned
                if usable(entry):
                    _link(entry, settings.workspace_cache)
                    return entry, "machine"
    return None


def _link(env: Path, workspace_cache: Path) -> None:
    """Record a machine-cache environment in the workspace: a symlink, and a back-reference
    beside the machine cache so ``prune_machine`` knows which workspaces use it."""
    workspace_cache.mkdir(parents=True, exist_ok=True)
    link = workspace_cache / env.name
    if not (link.is_symlink() and link.resolve() == env.resolve()):
        tmp = workspace_cache / f".link-{env.name[:16]}-{secrets.token_hex(4)}"
        tmp.symlink_to(env, target_is_directory=True)
        if link.exists() and not link.is_symlink():
            shutil.rmtree(link)  # a stale local build of the same hash
        os.replace(tmp, link)
    users = env.parent / ".users" / env.name
    users.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(str(workspace_cache.resolve()).encode()).hexdigest()[:16]
    (users / key).write_text(str(workspace_cache.resolve()))


# --------------------------------------------------------------------------- building


class _Reporter:
    def __init__(self, log: IO[str] | None, progress: Progress | None) -> None:
        self.log = log
        self.progress = progress
        self.current = (1, 1)

    def step(self, step: int, steps: int, message: str) -> None:
        self.current = (step, steps)
        self._write(f"[{step}/{steps}] {message}")
        if self.progress is not None:
            self.progress(Step(step, steps, message))

    def line(self, text: str, summary: bool = True) -> None:
        self._write(f"    {text}")
        if summary and self.progress is not None:
            self.progress(Step(*self.current, text, detail=True))

    def _write(self, text: str) -> None:
        if self.log is not None:
            self.log.write(text + "\n")
            self.log.flush()


@contextlib.contextmanager
def _locked(path: Path, report: _Reporter | None = None) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if report is not None:
                report.line("another deploy is building this environment; waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _build(spec: EnvironmentSpec, canon: Canonical, settings: CacheSettings, report: _Reporter) -> tuple[Path, bool]:
    root = settings.build_cache
    root.mkdir(parents=True, exist_ok=True)
    final = root / canon.hash
    with _locked(root / ".locks" / f"{canon.hash}.lock", report):
        if usable(final):
            report.step(_BUILD_STEPS, _BUILD_STEPS, f"environment ready (another deploy built it meanwhile): {final}")
            return final, False
        _remove(final)  # an entry whose interpreter went away
        for stale in root.glob(f".tmp-{canon.hash[:16]}-*"):
            _remove(stale)  # left by a builder that was killed (we hold the lock: nobody else builds it)
        tmp = root / f".tmp-{canon.hash[:16]}-{os.getpid()}-{secrets.token_hex(3)}"
        started = time.monotonic()
        try:
            info = _build_into(tmp, spec, canon, settings, report)
            seconds = round(time.monotonic() - started, 2)
            metadata = {
                "format": FORMAT,
                "hash": canon.hash,
                "name": spec.name,
                "spec": spec.to_dict(),
                "canonical": canon.document,
                "created": time.time(),
                "build_seconds": seconds,
                **info,
            }
            (tmp / METADATA).write_text(json.dumps(metadata, indent=2))
            os.rename(tmp, final)
        except BaseException:
            _remove(tmp)
            raise
        with open(root / JOURNAL, "a") as journal:
            journal.write(json.dumps({"hash": canon.hash, "name": spec.name, "time": time.time(), "seconds": seconds}))
            journal.write("\n")
        report.step(5, _BUILD_STEPS, f"environment ready in {seconds:.1f} s: {final}")
        return final, True


def _build_into(
    tmp: Path, spec: EnvironmentSpec, canon: Canonical, settings: CacheSettings, report: _Reporter
) -> dict[str, Any]:
    uv = _uv(settings)
    python_request = spec.python_version or sys.executable
    report.step(2, _BUILD_STEPS, f"creating a virtual environment (Python {canon.python})")
    command = [uv, "venv", "--relocatable", "--python", python_request, str(tmp)]
    _run(command + (["--offline"] if settings.offline else []), settings, report, shown="uv venv")

    runtime_dir = tmp / RUNTIME_DIR
    copy_runtime(runtime_dir / "modelfleet")
    site = next(tmp.glob("lib/python*/site-packages"))
    # relative, so the folder can be renamed into place (and the .pth only adds our runtime)
    (site / "modelfleet-runtime.pth").write_text(os.path.relpath(runtime_dir, site) + "\n")
    requirements = tmp / "modelfleet-requirements.txt"
    requirements.write_text(install_file(canon))

    count = len(canon.requirements)
    report.step(3, _BUILD_STEPS, f"installing {count} package(s) and the replica runtime")
    command = [uv, "pip", "install", "--python", _python(tmp), "-r", str(requirements)]
    for folder in settings.find_links:
        command += ["--find-links", folder]
    if settings.offline:
        command += ["--offline", "--no-index"]
    _run(command, settings, report, shown="uv pip install")

    report.step(4, _BUILD_STEPS, "checking that the replica runtime imports")
    out = _run([_python(tmp), "-I", "-c", _CHECK], settings, report, quiet=True, shown="python -I -c <runtime check>")
    info: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return info


# Runs inside the new environment (-I: no user site, no PYTHONPATH): what a replica imports at start.
_CHECK = """
import importlib.metadata as m, json, platform, sys
import modelfleet.replica.server, modelfleet.replica.entry, modelfleet.replica.swagger
import inference_schema.schema_util
print(json.dumps({"python": platform.python_version(), "installed":
    sorted(d.metadata["Name"] + "==" + d.version for d in m.distributions())}))
"""


def _uv(settings: CacheSettings) -> str:
    if settings.uv:
        return settings.uv
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found:
            return found
    raise BuildError("uv is needed to build environments and was not found; install it (pip install uv)")


def _run(command: list[str], settings: CacheSettings, report: _Reporter, *, shown: str, quiet: bool = False) -> str:
    """Run one build command, its output line by line into the log (summary lines as progress
    too); on failure a BuildError with the tail of that output."""
    env = dict(os.environ)
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "1000"  # one message per line in the log, not wrapped at a terminal's width
    env.pop("VIRTUAL_ENV", None)  # the target is always given explicitly
    if settings.uv_cache is not None:
        env["UV_CACHE_DIR"] = str(settings.uv_cache)
    text = " ".join(command)
    report.line("$ " + (shown if "\n" in text else text), summary=False)
    try:
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=env,
            cwd=settings.build_cache,  # not the user's folder: uv must find no project config there
        )
    except OSError as exc:
        raise BuildError(f"cannot run {command[0]}: {exc.strerror}") from None
    lines: list[str] = []
    assert proc.stdout is not None
    with proc.stdout:  # closed here, not left to the collector (a ResourceWarning in-process)
        for raw in proc.stdout:
            line = raw.rstrip()
            lines.append(line)
            report.line(line, summary=not quiet and bool(_SUMMARY.match(line.strip())))
    code = proc.wait()
    if code != 0:
        tail = "\n".join(x for x in lines[-25:] if x.strip())
        raise BuildError(f"{shown} failed (exit status {code}):\n{tail}")
    return "\n".join(lines)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _check_user_managed(spec: EnvironmentSpec) -> None:
    assert spec.python_executable is not None
    if spec.pip_requirements and os.path.realpath(spec.python_executable) == os.path.realpath(sys.executable):
        missing = unsatisfied(spec.pip_requirements)
        if missing:
            raise BuildError(
                f"environment {spec.name!r} is user-managed ({spec.python_executable}), and that interpreter lacks "
                f"{', '.join(missing)}; install them there, or leave python_executable out to have modelfleet "
                "build the environment"
            )


def unsatisfied(requirements: tuple[str, ...] | list[str]) -> list[str]:
    """The requirements (pip syntax) that the running interpreter does not satisfy."""
    from importlib import metadata

    missing = []
    for line in requirements:
        if line.startswith("-"):
            continue  # pip options say nothing about what is installed
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            missing.append(f"{line} (not a valid requirement)")
            continue
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            missing.append(f"{line} (found {version})")
    return missing
