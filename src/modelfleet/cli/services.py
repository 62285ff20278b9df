"""``modelfleet service ...``: deployed services."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

from modelfleet.cli.common import (
    add_deploy_settings,
    add_output,
    deploy_config_from_file,
    deploy_settings,
    inference_config_from_file,
    key_values,
    models_from_refs,
    pairs,
    print_output,
    shown,
    workspace,
)
from modelfleet.cli.completion import attach, model_refs, service_names
from modelfleet.errors import ConfigError
from modelfleet.spec.deploy import BY_FLAT

# settings that are metadata: changed without restarting replicas (sdk/service_meta.py)
METADATA_SETTINGS = ("tags", "properties", "description")


def register(groups: Any) -> None:
    service = groups.add_parser("service", help="deployed services").add_subparsers(
        metavar="COMMAND", dest="subcommand", required=True
    )
    svc_list = service.add_parser("list", help="the workspace's services, their state and scoring URI")
    add_output(svc_list)
    svc_list.set_defaults(handler=service_list)
    for verb, handler, help_text in [
        ("show", service_show, "one service: state, URIs, models, tags and deployment settings"),
        ("logs", service_logs, "its replicas' logs"),
        ("get-keys", service_get_keys, "its primary and secondary keys"),
        ("regen-key", service_regen_key, "replace a key"),
        ("get-access-token", service_get_access_token, "a fresh token (token auth) and when to refresh it"),
        ("run", service_run, "score through the router"),
        ("update", service_update, "new models, config or settings; no failed request"),
        ("delete", service_delete, "drain and remove"),
    ]:
        sub = service.add_parser(verb, help=help_text)
        attach(sub.add_argument("-n", "--name", required=True, help="service name"), service_names)
        sub.set_defaults(handler=handler)
        if verb in ("show", "get-keys", "get-access-token", "logs"):
            add_output(sub)
        if verb == "logs":
            sub.add_argument("-l", "--num-lines", type=int, default=5000, help="lines to print (default 5000)")
            sub.add_argument(
                "-f", "--follow", action="store_true", help="then print new lines as they come (Ctrl-C stops)"
            )
            sub.add_argument("--replica", type=int, metavar="N", help="replica N's log only")
        if verb == "regen-key":
            sub.add_argument(
                "-k", "--key", required=True, choices=["Primary", "Secondary"], help="which key to replace"
            )
            sub.add_argument("--set-key", help="use this value instead of a generated one")
        if verb == "run":
            sub.add_argument("-d", "--input-data", metavar="JSON", help="the request body")
            sub.add_argument("-f", "--input-file", metavar="FILE", help="a file holding the request body")
        if verb == "update":
            attach(
                sub.add_argument(
                    "-m", "--model", action="append", metavar="MODEL:VERSION", help="the new models, repeatable"
                ),
                model_refs,
            )
            sub.add_argument("--ic", "--inference-config-file", dest="ic", metavar="FILE",
                             help="a v1 inferenceconfig.json: new entry script, source or environment")  # fmt: skip
            sub.add_argument("--dc", "--deploy-config-file", dest="dc", metavar="FILE",
                             help="a v1 deploymentconfig.json: new settings")  # fmt: skip
            sub.add_argument("--add-tag", action="append", metavar="KEY=VALUE",
                             help="add or change a tag, repeatable (replicas are not restarted)")  # fmt: skip
            sub.add_argument("--remove-tag", action="append", metavar="KEY",
                             help="remove a tag, repeatable (replicas are not restarted)")  # fmt: skip
            sub.add_argument("--add-property", action="append", metavar="KEY=VALUE",
                             help="add a property, repeatable (replicas are not restarted)")  # fmt: skip
            sub.add_argument("--no-wait", action="store_true", help="return at once; do not wait for the update")
            add_deploy_settings(sub, keys=False)
    events = service.add_parser("scale-events", help="when and why its replica count changed, oldest first")
    attach(events.add_argument("-n", "--name", required=True, help="service name"), service_names)
    add_output(events)
    events.set_defaults(handler=service_scale_events)
    plan = service.add_parser("plan", help="replicas needed for a load (v1's calculator)")
    plan.add_argument("--rps", type=float, required=True, help="target requests per second")
    plan.add_argument("--request-seconds", type=float, required=True, help="seconds one request takes")
    target, concurrent = (
        BY_FLAT["autoscale_target_utilization"].default,
        BY_FLAT["replica_max_concurrent_requests"].default,
    )
    plan.add_argument("--target-utilization", type=float, default=target, help=f"percent (default {target})")
    plan.add_argument(
        "--max-concurrent", type=int, default=concurrent, help=f"replica_max_concurrent_requests (default {concurrent})"
    )
    add_output(plan)
    plan.set_defaults(handler=service_plan)


def _service(args: argparse.Namespace) -> Any:
    from modelfleet.sdk.webservice import Webservice

    return Webservice(workspace(args), args.name)


def service_list(args: argparse.Namespace) -> int:
    from modelfleet.sdk.webservice import Webservice

    ws = workspace(args)
    described = Webservice.serialize_all(ws)  # every service, the workspace read once
    rows = [f"{d['name']}  {d['state']}  {shown(d['scoringUri'])}" for d in described]
    if ws.store.shared:  # whose local cluster runs each (a teammate's, on their machine)
        rows = [f"{row}  {shown(d['cluster'])}" for row, d in zip(rows, described, strict=True)]
    print_output(args, described, "\n".join(rows) or "no services")
    return 0


def service_show(args: argparse.Namespace) -> int:
    data = _service(args).serialize()
    text = {**data, "models": [f"{m['name']}:{m['version']}" for m in data["models"]]}
    print_output(args, data, key_values(text))
    return 0


def service_logs(args: argparse.Namespace) -> int:
    service = _service(args)
    service._record()  # an unknown service is an error, not an empty log
    text = service.get_logs(num_lines=args.num_lines, replica=args.replica)
    if args.output != "table":
        if args.follow:
            raise ConfigError("--follow prints lines as they come; it takes no -o json|tsv")
        lines = text.splitlines()
        print_output(args, {"name": args.name, "lines": lines} if args.output == "json" else lines, None)
        return 0
    sys.stdout.write(text)
    sys.stdout.flush()
    if args.follow:
        from modelfleet.telemetry.logfiles import follow

        # listed again on each poll: replicas added by scaling are followed too
        for path, line in follow(lambda: service.log_paths(args.replica)):
            sys.stdout.write(line if args.replica is not None else f"[{path.stem}] {line}")
            sys.stdout.flush()
    return 0


def service_get_keys(args: argparse.Namespace) -> int:
    primary, secondary = _service(args).get_keys()
    print_output(args, {"primaryKey": primary, "secondaryKey": secondary}, f"{primary}\n{secondary}")
    return 0


def service_get_access_token(args: argparse.Namespace) -> int:
    token, refresh_by = _service(args).get_token()
    data = {"accessToken": token, "tokenType": "Bearer", "refreshBy": refresh_by}
    when = datetime.datetime.fromtimestamp(refresh_by, datetime.timezone.utc).isoformat(timespec="seconds")
    print_output(args, data, f"{token}\nrefresh by {when}")
    return 0


def service_regen_key(args: argparse.Namespace) -> int:
    _service(args).regen_key(args.key, set_key=args.set_key)
    print(f"{args.key} key regenerated")
    return 0


def service_run(args: argparse.Namespace) -> int:
    data = Path(args.input_file).read_text() if args.input_file else args.input_data
    if data is None:
        raise ConfigError("service run needs -d/--input-data JSON or -f/--input-file FILE")
    result = _service(args).run(data)
    print(json.dumps(result) if not isinstance(result, str) else result)
    return 0


def service_update(args: argparse.Namespace) -> int:
    service = _service(args)
    ws = service.workspace
    settings = deploy_settings(args)
    metadata = {k: settings.pop(k) for k in METADATA_SETTINGS if k in settings}
    _update_metadata(service, args, metadata)
    models = models_from_refs(ws, args.model) if args.model else None
    inference = inference_config_from_file(args.ic) if args.ic else None
    if models is None and inference is None and not args.dc and not settings:
        if not metadata and not (args.add_tag or args.remove_tag or args.add_property):
            raise ConfigError("service update needs something to change: -m, --ic, --dc, a setting flag or a tag")
        print(f"service {args.name}: metadata updated; its replicas were not restarted")
        return 0
    spec = deploy_config_from_file(args.dc) if args.dc else service._spec()
    spec = spec.replace(**settings) if settings else spec
    service._update(models, inference, spec)
    if not args.no_wait:
        service.wait_for_deployment(show_output=True)
    return 0


def _update_metadata(service: Any, args: argparse.Namespace, metadata: dict[str, Any]) -> None:
    """Tags, properties and description: recorded without touching the running replicas."""
    if metadata:
        service.update(**metadata)
    if args.add_tag:
        service.add_tags(pairs(args.add_tag, "--add-tag"))
    if args.remove_tag:
        service.remove_tags(args.remove_tag)
    if args.add_property:
        service.add_properties(pairs(args.add_property, "--add-property"))


def service_delete(args: argparse.Namespace) -> int:
    _service(args).delete()
    print(f"service {args.name} deleted")
    return 0


def service_scale_events(args: argparse.Namespace) -> int:
    events = _service(args).get_scale_events()
    rows = [
        f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(e['time']))}  {e['from']} -> {e['to']}  "
        f"utilization {'-' if e.get('utilization') is None else format(e['utilization'], '.0%')}  {e['reason']}"
        for e in events
    ]
    print_output(args, events, "\n".join(rows) or f"no scale events for {args.name}")
    return 0


def service_plan(args: argparse.Namespace) -> int:
    from modelfleet.sdk.webservice import AksWebservice

    replicas = AksWebservice.plan_replicas(args.rps, args.request_seconds, args.target_utilization, args.max_concurrent)
    data = {
        "replicas": replicas,
        "rps": args.rps,
        "request_seconds": args.request_seconds,
        "target_utilization": args.target_utilization,
        "max_concurrent": args.max_concurrent,
    }
    print_output(args, data, str(replicas))
    return 0
