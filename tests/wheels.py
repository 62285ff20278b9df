"""Wheels made on the spot, so environment builds in tests never reach a package index.

- ``make_wheel``: a tiny pure-Python package written straight into a ``.whl`` (a zip with
  its ``.dist-info``), no build backend needed.
- ``runtime_wheelhouse``: the replica runtime's packages (``envs.RUNTIME_REQUIREMENTS`` and
  what they require) repacked as wheels from the distributions installed in the interpreter
  running the tests. Their installed ``RECORD`` lists every file and ``WHEEL`` their tags, so
  the zip is the wheel pip unpacked, and uv installs it with ``--no-index --find-links``.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from modelfleet.envs import RUNTIME_REQUIREMENTS


def _record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def _write(path: Path, files: dict[str, bytes], dist_info: str) -> Path:
    record = [_record_line(name, data) for name, data in files.items()]
    record.append(f"{dist_info}/RECORD,,")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return path


def make_wheel(folder: Path, name: str, version: str, modules: dict[str, str], requires: tuple[str, ...] = ()) -> Path:
    """Write ``{name}-{version}-py3-none-any.whl`` holding ``modules`` (path → source)."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[-_.]+", "_", name)
    dist_info = f"{stem}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {path: source.encode() for path, source in modules.items()}
    files[f"{dist_info}/METADATA"] = meta.encode()
    files[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: modelfleet-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    return _write(folder / f"{stem}-{version}-py3-none-any.whl", files, dist_info)


def repack_installed(name: str, folder: Path) -> Path:
    """The installed distribution ``name`` as a wheel in ``folder``."""
    dist = metadata.distribution(name)
    base = Path(str(dist.locate_file("")))
    files: dict[str, bytes] = {}
    dist_info = ""
    for entry in dist.files or []:
        arcname = entry.as_posix()
        if arcname.startswith("..") or "__pycache__" in arcname or arcname.endswith(".pyc"):
            continue  # scripts outside site-packages, compiled caches
        if arcname.endswith(".dist-info/RECORD"):
            dist_info = arcname.rsplit("/", 1)[0]
            continue
        if arcname.endswith((".dist-info/INSTALLER", ".dist-info/REQUESTED", ".dist-info/direct_url.json")):
            continue
        files[arcname] = (base / entry).read_bytes()
    wheel_meta = files[f"{dist_info}/WHEEL"].decode()
    tags = [t.split("-") for t in re.findall(r"^Tag: (\S+)$", wheel_meta, re.MULTILINE)]
    assert tags, f"{name}: no Tag in its WHEEL file"
    # the compressed tag set of the file name (PEP 425): py2.py3-none-any
    tag = "-".join(".".join(dict.fromkeys(t[i] for t in tags)) for i in range(3))
    stem = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    return _write(folder / f"{stem}-{dist.version}-{tag}.whl", files, dist_info)


def runtime_wheelhouse(folder: Path) -> Path:
    """Wheels of the runtime's packages and their requirements, as installed here."""
    folder.mkdir(parents=True, exist_ok=True)
    pending = [Requirement(r) for r in RUNTIME_REQUIREMENTS]
    done: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in done or (requirement.marker is not None and not requirement.marker.evaluate({"extra": ""})):
            continue
        done.add(name)
        repack_installed(name, folder)
        pending += [Requirement(r) for r in metadata.requires(name) or []]
    return folder
