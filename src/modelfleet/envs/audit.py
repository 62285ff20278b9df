"""Known vulnerabilities in an environment's resolved packages, found with pip-audit.

v1 scanned its images; modelfleet audits what an environment really has installed (the
``Name==version`` list a build records, or what an interpreter's ``importlib.metadata``
lists) against a vulnerability service (PyPI's advisory data by default, or OSV), through
the ``pip-audit`` tool the Python Packaging Authority maintains.

pip-audit runs as a separate command, ``python -m pip_audit`` of this interpreter unless the
variable ``MODELFLEET_PIP_AUDIT`` names another command line (for example ``pipx run
pip-audit``), with ``--no-deps --disable-pip``: the list is already resolved, nothing is
installed to audit it. A service that cannot be reached is reported as such
(``AuditReport.unreachable``), never as "no vulnerabilities".
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelfleet.errors import ConfigError, ModelfleetError

__all__ = ["AuditReport", "Finding", "SERVICES", "audit_pins", "installed_pins", "parse_report", "pip_audit_available"]

SERVICES = ("pypi", "osv")
_NOT_ON_PYPI = "not found on PyPI"
# Runs inside the interpreter being audited: its distributions as Name==version.
_LIST = "import importlib.metadata as m, json; print(json.dumps(sorted({d.metadata['Name'] + '==' + d.version for d in m.distributions() if d.metadata['Name']})))"  # noqa: E501


@dataclass(frozen=True)
class Finding:
    """One advisory that applies to one installed package."""

    package: str
    version: str
    id: str
    fix_versions: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    description: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "package": self.package,
            "version": self.version,
            "id": self.id,
            "fix_versions": list(self.fix_versions),
            "aliases": list(self.aliases),
            "description": self.description,
        }


@dataclass
class AuditReport:
    audited: int = 0  # packages the service answered for
    findings: list[Finding] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (package, why it was not audited)
    unreachable: str | None = None  # why the service could not be asked, when it could not

    def as_dict(self) -> dict[str, Any]:
        return {
            "audited": self.audited,
            "findings": [f.as_dict() for f in self.findings],
            "skipped": [{"package": p, "reason": r} for p, r in self.skipped],
            "unreachable": self.unreachable,
        }


def pip_audit_available() -> bool:
    """Whether ``pip_audit_command`` has a command to run (deploys audit only then)."""
    return bool(os.environ.get("MODELFLEET_PIP_AUDIT")) or importlib.util.find_spec("pip_audit") is not None


def pip_audit_command() -> list[str]:
    override = os.environ.get("MODELFLEET_PIP_AUDIT")
    if override:
        return shlex.split(override)
    try:
        import pip_audit  # noqa: F401
    except ImportError:
        raise ModelfleetError(
            "pip-audit is not installed: `pip install 'modelfleet[audit]'` (or set MODELFLEET_PIP_AUDIT to its command)"
        ) from None
    return [sys.executable, "-m", "pip_audit"]


def installed_pins(python: str) -> list[str]:
    """``Name==version`` of every distribution ``python`` can import."""
    out = subprocess.run([python, "-I", "-c", _LIST], capture_output=True, text=True, timeout=60, check=False)
    if out.returncode != 0:
        raise ModelfleetError(f"could not list the packages of {python}: {out.stderr.strip()[-300:]}")
    pins: list[str] = json.loads(out.stdout)
    return pins


def parse_report(data: dict[str, Any]) -> AuditReport:
    """pip-audit's JSON (``-f json``) as a report."""
    report = AuditReport()
    for dep in data.get("dependencies", []):
        name = dep.get("name", "?")
        if "skip_reason" in dep:
            report.skipped.append((name, str(dep["skip_reason"])))
            continue
        report.audited += 1
        for vuln in dep.get("vulns", []):
            report.findings.append(
                Finding(
                    package=name,
                    version=str(dep.get("version", "?")),
                    id=str(vuln.get("id", "?")),
                    fix_versions=tuple(vuln.get("fix_versions") or ()),
                    aliases=tuple(vuln.get("aliases") or ()),
                    description=str(vuln.get("description") or ""),
                )
            )
    # PyPI's service answers "not found" for every package when its API cannot be reached
    if report.skipped and not report.audited and all(_NOT_ON_PYPI in r for _, r in report.skipped):
        report.unreachable = f"the service answered for none of the {len(report.skipped)} packages (all {_NOT_ON_PYPI})"
    return report


def audit_pins(pins: Sequence[str], service: str = "pypi", timeout_s: float = 300.0) -> AuditReport:
    """Audit resolved ``Name==version`` pins with pip-audit against ``service``."""
    if service not in SERVICES:
        raise ConfigError(f"vulnerability service must be one of {', '.join(SERVICES)} (got {service!r})")
    pinned = [p for p in pins if "==" in p]
    if not pinned:
        return AuditReport()
    with tempfile.TemporaryDirectory(prefix="mf-audit-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text("\n".join(pinned) + "\n")
        argv = [*pip_audit_command(), "-r", str(requirements), "--no-deps", "--disable-pip", "-f", "json",
                "-s", service, "--progress-spinner", "off"]  # fmt: skip
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return AuditReport(unreachable=f"pip-audit gave no answer within {timeout_s:.0f} s")
    try:
        data = json.loads(out.stdout)
    except ValueError:
        # pip-audit exits 1 both for "vulnerabilities found" (with JSON) and for a failure (without)
        last = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        return AuditReport(unreachable=f"pip-audit failed against the {service} service: {last[-300:]}")
    return parse_report(data)
