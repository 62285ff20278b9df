"""``modelfleet env audit NAME | --all``: known vulnerabilities in environments' packages.

Prints each finding with the versions that fix it. Exit status 0 unless asked otherwise:
``--fail-on-vulnerable`` (1 when anything is found) and ``--fail-on-unreachable`` (1 when the
vulnerability service could not be asked), so that a pipeline chooses what blocks it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from modelfleet.cli.common import add_output, print_output, workspace
from modelfleet.errors import ConfigError, NotFound


def add_audit_command(env: Any) -> None:
    audit = env.add_parser("audit", help="known vulnerabilities in an environment's packages (pip-audit)")
    audit.add_argument("name", metavar="NAME", nargs="?", help="environment name or hash prefix")
    audit.add_argument("--all", action="store_true", help="every environment the workspace's services use")
    audit.add_argument("--vulnerability-service", choices=("pypi", "osv"), default="pypi",
                       help="where pip-audit looks advisories up (default pypi)")  # fmt: skip
    audit.add_argument("--fail-on-vulnerable", action="store_true", help="exit 1 when a vulnerability is found")
    audit.add_argument("--fail-on-unreachable", action="store_true", help="exit 1 when the service cannot be asked")
    add_output(audit)
    audit.set_defaults(handler=env_audit)


def env_audit(args: argparse.Namespace) -> int:
    from modelfleet.control.environments import audit_subjects
    from modelfleet.envs.audit import audit_pins, installed_pins

    if bool(args.name) == bool(args.all):
        raise ConfigError("name one environment, or pass --all (not both)")
    ws = workspace(args)
    subjects = audit_subjects(ws.store, None if args.all else args.name)
    if not subjects:
        raise NotFound(
            f"no environment named {args.name!r} among the workspace's services and built environments"
            if args.name
            else "no service in this workspace uses an environment yet"
        )
    results: list[dict[str, Any]] = []
    lines: list[str] = []
    for label, packages in subjects:
        pins = installed_pins(packages) if isinstance(packages, str) else packages
        report = audit_pins(pins, service=args.vulnerability_service)
        results.append({"environment": label, "packages": len(pins), **report.as_dict()})
        if report.unreachable:
            lines.append(f"{label}: not audited: {report.unreachable}")
            continue
        lines.append(
            f"{label}: {report.audited} of {len(pins)} packages audited, {len(report.findings)} vulnerabilities"
        )
        for f in report.findings:
            also = f" ({', '.join(f.aliases)})" if f.aliases else ""
            fix = ", ".join(f.fix_versions) or "none yet"
            lines.append(f"  {f.package} {f.version}: {f.id}{also}; fixed in {fix}")
        for package, why in report.skipped:
            lines.append(f"  {package}: not audited ({why})")
    print_output(args, results if args.all else results[0] if len(results) == 1 else results, "\n".join(lines))
    vulnerable = any(r["findings"] for r in results)
    unreachable = any(r["unreachable"] for r in results)
    if unreachable:
        print("warning: the vulnerability service could not be asked for every environment", file=sys.stderr)
    if (args.fail_on_vulnerable and vulnerable) or (args.fail_on_unreachable and unreachable):
        return 1
    return 0
