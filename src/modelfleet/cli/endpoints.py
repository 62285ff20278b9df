"""``modelfleet endpoint ...``: endpoints and their versions (v1's ``AksEndpoint``).

A *version* is an endpoint's named deployment ("blue", "green"); a *model version* is a
registered model's number (``-m NAME:VERSION``).
"""

from __future__ import annotations

import argparse
from typing import Any

from modelfleet.cli.common import (
    add_deploy_settings,
    add_output,
    deploy_config_from_args,
    deploy_config_from_file,
    deploy_settings,
    inference_config_from_file,
    key_values,
    models_from_refs,
    print_output,
    shown,
    workspace,
)
from modelfleet.cli.completion import attach, model_refs, service_names
from modelfleet.errors import ConfigError


def register(groups: Any) -> None:
    endpoint = groups.add_parser("endpoint", help="endpoints: one scoring URI, versions behind it").add_subparsers(
        metavar="COMMAND", dest="subcommand", required=True
    )
    create = endpoint.add_parser("create", help="deploy an endpoint with its first version (the default)")
    _name(create)
    _version_flags(create, required=True)
    create.add_argument("--overwrite", action="store_true", help="replace an endpoint of that name")
    add_deploy_settings(create)
    create.set_defaults(handler=endpoint_create)
    ep_list = endpoint.add_parser("list", help="the workspace's endpoints, their state, URI and split")
    add_output(ep_list)
    ep_list.set_defaults(handler=endpoint_list)
    for verb, handler, help_text in [
        ("show", endpoint_show, "one endpoint: state, URI, versions and their shares"),
        ("get-keys", endpoint_get_keys, "its primary and secondary keys (they belong to the endpoint)"),
        ("delete", endpoint_delete, "drain and remove the endpoint and every version"),
    ]:
        sub = endpoint.add_parser(verb, help=help_text)
        _name(sub)
        if verb != "delete":
            add_output(sub)
        sub.set_defaults(handler=handler)
    traffic = endpoint.add_parser(
        "traffic",
        help="set the split: VERSION=PERCENT ...; versions left out get 0, the default takes what is left",
    )
    _name(traffic)
    traffic.add_argument("shares", nargs="+", metavar="VERSION=PERCENT", help="e.g. blue=90 green=10")
    traffic.set_defaults(handler=endpoint_traffic)
    compare = endpoint.add_parser(
        "compare", help="two versions side by side: requests, error rate, p50/p99 (from the running cluster)"
    )
    _name(compare)
    compare.add_argument("version_a", metavar="VERSION", help="e.g. blue")
    compare.add_argument("version_b", metavar="VERSION", help="e.g. green")
    add_output(compare)
    compare.set_defaults(handler=endpoint_compare)
    rollout = endpoint.add_parser(
        "rollout", help="move a version's share step by step, rolling back by itself past the bounds"
    )
    _name(rollout)
    rollout.add_argument("--version-name", required=True, help="the version to roll out, e.g. green")
    rollout.add_argument("--steps", required=True, metavar="P,P,...", help="increasing percentages, e.g. 10,50,100")
    rollout.add_argument("--interval-s", required=True, type=float, help="seconds at each step before its check")
    rollout.add_argument("--max-error-rate", required=True, type=float, help="5xx / answers, 0-1, e.g. 0.01")
    rollout.add_argument("--max-p99-ms", type=float, default=None, help="p99 latency bound in ms (optional)")
    rollout.set_defaults(handler=endpoint_rollout)
    events = endpoint.add_parser("events", help="the endpoint's rollout events: steps, holds, rollbacks")
    _name(events)
    add_output(events)
    events.set_defaults(handler=endpoint_events)

    version = endpoint.add_parser("version", help="an endpoint's versions").add_subparsers(
        metavar="COMMAND", dest="version_command", required=True
    )
    v_create = version.add_parser("create", help="add a version (its own models, config and settings)")
    _name(v_create)
    _version_flags(v_create, required=True)
    add_deploy_settings(v_create, keys=False)
    v_create.set_defaults(handler=version_create)
    v_update = version.add_parser("update", help="change a version's share, default-ness, models or settings")
    _name(v_update)
    _version_flags(v_update, required=False)
    add_deploy_settings(v_update, keys=False)
    v_update.set_defaults(handler=version_update)
    v_delete = version.add_parser("delete", help="remove a version (not the default, not the only one)")
    _name(v_delete)
    v_delete.add_argument("--version-name", required=True, help="the version to remove")
    v_delete.set_defaults(handler=version_delete)
    v_list = version.add_parser("list", help="an endpoint's versions and their shares")
    _name(v_list)
    add_output(v_list)
    v_list.set_defaults(handler=version_list)


def _name(sub: argparse.ArgumentParser) -> None:
    attach(sub.add_argument("-n", "--name", required=True, help="endpoint name"), service_names)


def _version_flags(sub: argparse.ArgumentParser, required: bool) -> None:
    sub.add_argument("--version-name", required=True, help="the version's name, e.g. blue")
    attach(
        sub.add_argument(
            "-m", "--model", action="append", metavar="MODEL:VERSION", required=required, help="a model, repeatable"
        ),
        model_refs,
    )
    sub.add_argument("--ic", "--inference-config-file", dest="ic", metavar="FILE", required=required,
                     help="a v1 inferenceconfig.json")  # fmt: skip
    sub.add_argument("--dc", "--deploy-config-file", dest="dc", metavar="FILE", help="a v1 deploymentconfig.json")
    sub.add_argument("--traffic-percentile", type=float, metavar="PERCENT",
                     help="its share of requests, 0-100 (the default version takes what others leave)")  # fmt: skip
    sub.add_argument("--is-default", action="store_true", help="make it the default version")
    sub.add_argument("--mirror-percentile", type=float, metavar="PERCENT",
                     help="a mirror: gets a copy of this share (0-100) of the others' requests, its answers "
                          "discarded (no traffic share, not the default)")  # fmt: skip
    sub.add_argument("--no-wait", action="store_true", help="return at once; do not wait for the deployment")


def _endpoint(args: argparse.Namespace) -> Any:
    from modelfleet.sdk.webservice import AksEndpoint

    return AksEndpoint(workspace(args), args.name)


def _deploy_spec(args: argparse.Namespace) -> Any:
    from modelfleet.spec import aks_deploy_configuration

    return deploy_config_from_args(args) or aks_deploy_configuration()


def endpoint_create(args: argparse.Namespace) -> int:
    from modelfleet.sdk.model import Model
    from modelfleet.sdk.webservice import EndpointDeployConfig
    from modelfleet.spec import validate_service_name
    from modelfleet.spec.names import validate_version_name

    validate_service_name(args.name)
    validate_version_name(args.version_name)
    config = EndpointDeployConfig(_deploy_spec(args), args.version_name, args.traffic_percentile, True)
    ws = workspace(args)
    ep = Model.deploy(ws, args.name, models_from_refs(ws, args.model), inference_config_from_file(args.ic), config,
                      overwrite=args.overwrite)  # fmt: skip
    if not args.no_wait:
        ep.wait_for_deployment(show_output=True)
    print(f"scoring uri: {ep.scoring_uri}")
    return 0


def _described(ep: Any) -> dict[str, Any]:
    versions = ep.versions
    split = ep.traffic
    return {
        "name": ep.name,
        "state": ep.state,
        "scoringUri": ep.scoring_uri,
        "defaultVersion": ep.default_version,
        "versions": [
            {
                "name": n,
                "state": v.state,
                "isDefault": v.is_default,
                "trafficPercentile": v.traffic_percentile,
                "mirrorPercentile": v.mirror_percentile,
                "share": split[n],
                "models": [f"{m['name']}:{m['version']}" for m in v.models],
                "error": v.error if v.state != "Healthy" else None,
            }
            for n, v in versions.items()
        ],
    }


def _split_text(data: dict[str, Any]) -> str:
    return ", ".join(f"{v['name']}{'*' if v['isDefault'] else ''} {v['share']:g}%" for v in data["versions"])


def endpoint_list(args: argparse.Namespace) -> int:
    from modelfleet.sdk.webservice import AksEndpoint, Webservice

    endpoints = [e for e in Webservice.list(workspace(args)) if isinstance(e, AksEndpoint)]
    described = [_described(e) for e in endpoints]
    rows = [f"{d['name']}  {d['state']}  {shown(d['scoringUri'])}  {_split_text(d)}" for d in described]
    print_output(args, described, "\n".join(rows) or "no endpoints")
    return 0


def endpoint_show(args: argparse.Namespace) -> int:
    ep = _endpoint(args)
    data = _described(ep)
    rollout = ep.rollout
    data["rollout"] = rollout
    text = {k: v for k, v in data.items() if k not in ("versions", "rollout")}
    text["versions"] = _split_text(data) + " (* the default)"
    if rollout is not None:
        steps = ",".join(f"{s:g}" for s in rollout["spec"]["steps"])
        reason = f": {rollout['reason']}" if rollout.get("reason") else ""
        text["rollout"] = f"{rollout['version']} steps {steps}, {rollout['status']}{reason}"
    print_output(args, data, key_values(text))
    return 0


def endpoint_get_keys(args: argparse.Namespace) -> int:
    primary, secondary = _endpoint(args).get_keys()
    print_output(args, {"primaryKey": primary, "secondaryKey": secondary}, f"{primary}\n{secondary}")
    return 0


def endpoint_delete(args: argparse.Namespace) -> int:
    _endpoint(args).delete()
    print(f"endpoint {args.name} deleted")
    return 0


def endpoint_traffic(args: argparse.Namespace) -> int:
    shares: dict[str, float] = {}
    for item in args.shares:
        name, sep, value = item.partition("=")
        try:
            shares[name] = float(value) if sep else float("nan")
        except ValueError:
            shares[name] = float("nan")
        if not sep or shares[name] != shares[name]:
            raise ConfigError(f"traffic: give each share as VERSION=PERCENT, e.g. blue=90 (got {item!r})")
    ep = _endpoint(args)
    ep.set_traffic(shares)
    print(f"endpoint {args.name}: {', '.join(f'{n} {p:g}%' for n, p in ep.traffic.items())}")
    return 0


def endpoint_compare(args: argparse.Namespace) -> int:
    data = _endpoint(args).compare(args.version_a, args.version_b)

    def cell(value: Any, unit: str = "") -> str:
        return "-" if value is None else f"{value:.4g}{unit}" if isinstance(value, float) else f"{value}{unit}"

    rows = [f"{'version':<12} {'requests':>9} {'errors':>7} {'error rate':>10} {'p50':>10} {'p99':>10}"]
    for name, v in data["versions"].items():
        rows.append(
            f"{name:<12} {v['requests']:>9} {v['errors']:>7} {cell(v['error_rate']):>10} "
            f"{cell(v['p50_ms'], ' ms'):>10} {cell(v['p99_ms'], ' ms'):>10}"
        )
    agreement = data.get("agreement")
    if agreement is not None:
        rows.append(
            f"mirror {agreement['mirror']}: {agreement['agreed']} of {agreement['compared']} answers agreed"
            f" ({cell(agreement['agreement'])})"
        )
    rows.append(f"({data['window']})")
    print_output(args, data, "\n".join(rows))
    return 0


def endpoint_rollout(args: argparse.Namespace) -> int:
    steps: list[float] = []
    for item in args.steps.split(","):
        try:
            steps.append(float(item))
        except ValueError:
            raise ConfigError(
                f"--steps: give increasing percentages separated by commas, e.g. 10,50,100 (got {args.steps!r})"
            ) from None
    spec = {"steps": steps, "interval_s": args.interval_s, "max_error_rate": args.max_error_rate,
            "max_p99_ms": args.max_p99_ms}  # fmt: skip
    _endpoint(args).update_version(args.version_name, rollout=spec)
    print(f"endpoint {args.name}: rollout of {args.version_name} started (`modelfleet endpoint events -n {args.name}`)")
    return 0


def endpoint_events(args: argparse.Namespace) -> int:
    import datetime

    events = _endpoint(args).get_events()
    rows = []
    for e in events:
        when = datetime.datetime.fromtimestamp(e["time"], datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        step = f" step {e['step']:g}" if isinstance(e.get("step"), int | float) else ""
        figures = f" ({e['errors']} of {e['requests']} 5xx)" if "requests" in e else ""
        reason = f": {e['reason']}" if e.get("reason") else ""
        rows.append(f"{when}  {e['version']}  {e['event']}{step}{figures}{reason}")
    print_output(args, events, "\n".join(rows) or "no events")
    return 0


def version_create(args: argparse.Namespace) -> int:
    ep = _endpoint(args)
    share: dict[str, Any] = (
        {"traffic_percentile": args.traffic_percentile} if args.traffic_percentile is not None else {}
    )
    if args.is_default:
        share["is_default"] = True
    if args.mirror_percentile is not None:
        share["mirror_percentile"] = args.mirror_percentile
    models = models_from_refs(ep.workspace, args.model)
    version = ep._add_version(args.version_name, models, inference_config_from_file(args.ic), _deploy_spec(args), share)
    if not args.no_wait:
        version.wait_for_deployment(show_output=True)
    print(f"endpoint {args.name}: {', '.join(f'{n} {p:g}%' for n, p in ep.traffic.items())}")
    return 0


def version_update(args: argparse.Namespace) -> int:
    from modelfleet.sdk.webservice import version_spec

    ep = _endpoint(args)
    settings = deploy_settings(args)
    models = models_from_refs(ep.workspace, args.model) if args.model else None
    inference = inference_config_from_file(args.ic) if args.ic else None
    deploys = models is not None or inference is not None or bool(settings) or bool(args.dc)
    if not deploys and args.traffic_percentile is None and not args.is_default and args.mirror_percentile is None:
        raise ConfigError(
            "endpoint version update needs something to change: --traffic-percentile, --is-default, "
            "--mirror-percentile, -m, --ic, --dc or a setting flag"
        )
    ep.update_version(  # the share first: checked before anything is redeployed
        args.version_name,
        traffic_percentile=args.traffic_percentile,
        is_default=True if args.is_default else None,
        mirror_percentile=args.mirror_percentile,
    )
    if deploys:
        version = ep.versions[args.version_name]
        spec = deploy_config_from_file(args.dc) if args.dc else version._spec()
        version._update(models, inference, version_spec(spec.replace(**settings) if settings else spec))
        if not args.no_wait:
            version.wait_for_deployment(show_output=True)
    print(f"endpoint {args.name}: {', '.join(f'{n} {p:g}%' for n, p in ep.traffic.items())}")
    return 0


def version_delete(args: argparse.Namespace) -> int:
    _endpoint(args).delete_version(args.version_name)
    print(f"endpoint {args.name}: version {args.version_name} deleted")
    return 0


def version_list(args: argparse.Namespace) -> int:
    data = _described(_endpoint(args))["versions"]
    rows = [
        f"{v['name']}{'*' if v['isDefault'] else ''}  {v['state']}  {v['share']:g}%  {' '.join(v['models'])}"
        for v in data
    ]
    print_output(args, data, "\n".join(rows))
    return 0
