"""The ``modelfleet`` command, shaped like the v1 ``az ml`` CLI.

Each command parses its arguments, calls the SDK and prints; nothing here decides anything.
Exit status 0 on success; otherwise 1 with one line on stderr (2 for usage errors).
``--output json`` on the read commands prints JSON for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from modelfleet.errors import ConfigError, ModelfleetError

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["serve"]:
        from modelfleet.replica import main as serve_main

        return serve_main(args_list[1:])
    parser = _parser()
    args = parser.parse_args(args_list)
    if not hasattr(args, "handler"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.handler(args))
    except ModelfleetError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# -- helpers -----------------------------------------------------------------------------------


def _workspace(args: argparse.Namespace) -> Any:
    from modelfleet.sdk.workspace import Workspace

    return Workspace.get(args.workspace) if args.workspace else Workspace.from_config()


def _print(args: argparse.Namespace, data: Any, text: str | None = None) -> None:
    if getattr(args, "output", "table") == "json" or text is None:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text)


def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    result = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} takes KEY=VALUE (got {item!r})")
        result[key] = value
    return result


def _read_json(path: str, flag: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{flag}: file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag}: {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{flag}: {path} must hold a JSON object")
    return data


def _models(ws: Any, refs: list[str]) -> list[Any]:
    from modelfleet.sdk.model import Model
    from modelfleet.spec import parse_model_ref

    models = []
    for ref in refs:
        name, version = parse_model_ref(ref)
        models.append(Model(ws, name, version=version))
    return models


def _inference_config(path: str) -> Any:
    from modelfleet.sdk.environment import InferenceConfig
    from modelfleet.spec import InferenceSpec

    spec = InferenceSpec.from_v1_json(_read_json(path, "--ic"), Path(path).resolve().parent)
    return _SpecInferenceConfig(spec) if spec else InferenceConfig(entry_script="score.py")


class _SpecInferenceConfig:
    """An InferenceConfig read from a v1 inferenceconfig.json (already a spec)."""

    def __init__(self, spec: Any) -> None:
        self._spec = spec

    def to_spec(self) -> Any:
        return self._spec


def _deploy_config(path: str) -> Any:
    from modelfleet.spec import DeploySpec

    return DeploySpec.from_v1_json(_read_json(path, "--dc"))


# -- cluster -------------------------------------------------------------------------------


def cluster_start(args: argparse.Namespace) -> int:
    ws = _workspace(args)
    info = ws.cluster().ensure_running(port=args.port, host=args.host)
    print(f"cluster running: router http://{info['router_host']}:{info['router_port']} (pid {info['pid']})")
    return 0


def cluster_stop(args: argparse.Namespace) -> int:
    stopped = _workspace(args).cluster().stop()
    print("cluster stopped" if stopped else "cluster was not running")
    return 0


def cluster_status(args: argparse.Namespace) -> int:
    ws = _workspace(args)
    cluster = ws.cluster()
    info = cluster.info()
    if info is None:
        _print(args, {"running": False}, "cluster: not running")
        return 0
    status = cluster.status()
    data = {
        "running": True,
        "pid": info["pid"],
        "router_uri": f"http://{info['router_host']}:{info['router_port']}",
        **status,
    }
    lines = [f"cluster: running (pid {info['pid']}), router {data['router_uri']}"]
    for name, svc in status["services"].items():
        lines.append(f"  {name}: generation {svc['serving_generation']}, {status['router'].get(name, {})}")
        for replica in svc["replicas"]:
            lines.append(
                f"    {replica['id']}: {replica['state']} pid={replica['pid']} port={replica['port']} "
                f"restarts={replica['restarts']}"
            )
    _print(args, data, "\n".join(lines))
    return 0


# -- models --------------------------------------------------------------------------------


def model_register(args: argparse.Namespace) -> int:
    from modelfleet.sdk.model import Model

    model = Model.register(
        _workspace(args),
        args.path,
        args.name,
        tags=_pairs(args.tag, "--tag"),
        properties=_pairs(args.property, "--property"),
        description=args.description,
    )
    _print(args, model.serialize(), f"registered {model.name}:{model.version}")
    return 0


def model_list(args: argparse.Namespace) -> int:
    from modelfleet.sdk.model import Model

    models = Model.list(_workspace(args), name=args.name, latest=args.latest)
    rows = [f"{m.name}:{m.version}  {json.dumps(m.tags)}" for m in models]
    _print(args, [m.serialize() for m in models], "\n".join(rows) or "no models")
    return 0


def model_show(args: argparse.Namespace) -> int:
    from modelfleet.sdk.model import Model

    model = Model(_workspace(args), args.name, version=args.version)
    _print(args, model.serialize(), json.dumps(model.serialize(), indent=2, default=str))
    return 0


def model_download(args: argparse.Namespace) -> int:
    from modelfleet.sdk.model import Model

    model = Model(_workspace(args), args.name, version=args.version)
    print(model.download(args.target_dir, exist_ok=args.overwrite))
    return 0


def model_deploy(args: argparse.Namespace) -> int:
    from modelfleet.sdk.model import Model
    from modelfleet.spec import validate_service_name

    # everything the user typed is checked before anything is looked up or created
    validate_service_name(args.name)
    deploy_config = _deploy_config(args.dc) if args.dc else None
    inference_config = _inference_config(args.ic)
    ws = _workspace(args)
    models = _models(ws, args.model)
    service = Model.deploy(ws, args.name, models, inference_config, deploy_config, overwrite=args.overwrite)
    if not args.no_wait:
        service.wait_for_deployment(show_output=True)
    print(f"scoring uri: {service.scoring_uri}")
    return 0


# -- services ------------------------------------------------------------------------------


def _service(args: argparse.Namespace) -> Any:
    from modelfleet.sdk.webservice import Webservice

    return Webservice(_workspace(args), args.name)


def service_list(args: argparse.Namespace) -> int:
    from modelfleet.sdk.webservice import Webservice

    services = Webservice.list(_workspace(args))
    rows = [f"{s.name}  {s.state}  {s.scoring_uri}" for s in services]
    _print(args, [s.serialize() for s in services], "\n".join(rows) or "no services")
    return 0


def service_show(args: argparse.Namespace) -> int:
    data = _service(args).serialize()
    _print(args, data, json.dumps(data, indent=2, default=str))
    return 0


def service_logs(args: argparse.Namespace) -> int:
    sys.stdout.write(_service(args).get_logs(num_lines=args.num_lines))
    return 0


def service_get_keys(args: argparse.Namespace) -> int:
    primary, secondary = _service(args).get_keys()
    _print(args, {"primaryKey": primary, "secondaryKey": secondary}, f"{primary}\n{secondary}")
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
    models = _models(ws, args.model) if args.model else None
    inference = _inference_config(args.ic) if args.ic else None
    spec = _deploy_config(args.dc) if args.dc else service._spec()
    service._update(models, inference, spec)
    if not args.no_wait:
        service.wait_for_deployment(show_output=True)
    return 0


def service_delete(args: argparse.Namespace) -> int:
    _service(args).delete()
    print(f"service {args.name} deleted")
    return 0


# -- the parser ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelfleet", description="Deploy models as authenticated web services.")
    parser.add_argument("-w", "--workspace", help="workspace folder (default: found upward from the current folder)")
    groups = parser.add_subparsers(title="commands", metavar="{serve,workspace,cluster,model,service}")
    groups.add_parser("serve", help="run one replica in the foreground (flags as azmlinfsrv)")

    workspace = groups.add_parser("workspace", help="create a workspace").add_subparsers()
    create = workspace.add_parser("create", help="create a workspace folder")
    create.add_argument("-n", "--name", required=True)
    create.add_argument("-p", "--path", help="folder (default: ./NAME)")
    create.set_defaults(handler=workspace_create)

    cluster = groups.add_parser("cluster", help="the local cluster daemon").add_subparsers()
    start = cluster.add_parser("start", help="start the local cluster (deploy does this on demand)")
    start.add_argument("--port", type=int, help="router port (default: the last one used, else a free one)")
    start.add_argument("--host", default="127.0.0.1", help="router address to bind (default 127.0.0.1)")
    start.set_defaults(handler=cluster_start)
    cluster.add_parser("stop", help="stop it; services come back on the next start").set_defaults(handler=cluster_stop)
    status = cluster.add_parser("status", help="daemon, router and replicas")
    _output(status)
    status.set_defaults(handler=cluster_status)

    model = groups.add_parser("model", help="registered models").add_subparsers()
    register = model.add_parser("register", help="register a file or folder as the next version")
    register.add_argument("-n", "--name", required=True)
    register.add_argument("-p", "--path", "--model-path", dest="path", required=True)
    register.add_argument("-t", "--tag", action="append", help="KEY=VALUE, repeatable")
    register.add_argument("--property", action="append", help="KEY=VALUE, repeatable")
    register.add_argument("-d", "--description")
    _output(register)
    register.set_defaults(handler=model_register)
    listing = model.add_parser("list", help="registered models")
    listing.add_argument("-n", "--name")
    listing.add_argument("-l", "--latest", action="store_true")
    _output(listing)
    listing.set_defaults(handler=model_list)
    show = model.add_parser("show", help="one model version")
    show.add_argument("-n", "--name", required=True)
    show.add_argument("-v", "--version", type=int)
    _output(show)
    show.set_defaults(handler=model_show)
    download = model.add_parser("download", help="copy a model version's files to a folder")
    download.add_argument("-n", "--name", required=True)
    download.add_argument("-v", "--version", type=int)
    download.add_argument("-t", "--target-dir", default=".")
    download.add_argument("--overwrite", action="store_true")
    download.set_defaults(handler=model_download)
    deploy = model.add_parser("deploy", help="deploy models as a service (v1 JSON config files)")
    deploy.add_argument("-n", "--name", required=True, help="service name")
    deploy.add_argument("-m", "--model", action="append", required=True, help="MODEL:VERSION, repeatable")
    deploy.add_argument("--ic", "--inference-config-file", dest="ic", required=True)
    deploy.add_argument("--dc", "--deploy-config-file", dest="dc")
    deploy.add_argument("--overwrite", action="store_true")
    deploy.add_argument("--no-wait", action="store_true")
    deploy.set_defaults(handler=model_deploy)

    service = groups.add_parser("service", help="deployed services").add_subparsers()
    svc_list = service.add_parser("list")
    _output(svc_list)
    svc_list.set_defaults(handler=service_list)
    for verb, handler, help_text in [
        ("show", service_show, "one service"),
        ("logs", service_logs, "its replicas' logs"),
        ("get-keys", service_get_keys, "its primary and secondary keys"),
        ("regen-key", service_regen_key, "replace a key"),
        ("run", service_run, "score through the router"),
        ("update", service_update, "new models, config or settings; no failed request"),
        ("delete", service_delete, "drain and remove"),
    ]:
        sub = service.add_parser(verb, help=help_text)
        sub.add_argument("-n", "--name", required=True)
        sub.set_defaults(handler=handler)
        if verb in ("show", "get-keys"):
            _output(sub)
        if verb == "logs":
            sub.add_argument("-l", "--num-lines", type=int, default=5000)
        if verb == "regen-key":
            sub.add_argument("-k", "--key", required=True, choices=["Primary", "Secondary"])
            sub.add_argument("--set-key", help="use this value instead of a generated one")
        if verb == "run":
            sub.add_argument("-d", "--input-data")
            sub.add_argument("-f", "--input-file")
        if verb == "update":
            sub.add_argument("-m", "--model", action="append")
            sub.add_argument("--ic", "--inference-config-file", dest="ic")
            sub.add_argument("--dc", "--deploy-config-file", dest="dc")
            sub.add_argument("--no-wait", action="store_true")
    return parser


def _output(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("-o", "--output", choices=["table", "json"], default="table")


def workspace_create(args: argparse.Namespace) -> int:
    from modelfleet.sdk.workspace import Workspace

    ws = Workspace.create(args.name, args.path)
    print(f"workspace {ws.name} created at {ws.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
