"""``modelfleet model register|list|show|download|deploy``: the model registry."""

from __future__ import annotations

import argparse
import json
from typing import Any

from modelfleet.cli.common import (
    add_deploy_settings,
    add_output,
    deploy_config_from_args,
    inference_config_from_file,
    models_from_refs,
    pairs,
    print_output,
    workspace,
)


def register(groups: Any) -> None:
    model = groups.add_parser("model", help="registered models").add_subparsers()
    register = model.add_parser("register", help="register a file or folder as the next version")
    register.add_argument("-n", "--name", required=True)
    register.add_argument("-p", "--path", "--model-path", dest="path", required=True)
    register.add_argument("-t", "--tag", action="append", help="KEY=VALUE, repeatable")
    register.add_argument("--property", action="append", help="KEY=VALUE, repeatable")
    register.add_argument("-d", "--description")
    add_output(register)
    register.set_defaults(handler=model_register)
    listing = model.add_parser("list", help="registered models")
    listing.add_argument("-n", "--name")
    listing.add_argument("-l", "--latest", action="store_true")
    add_output(listing)
    listing.set_defaults(handler=model_list)
    show = model.add_parser("show", help="one model version")
    show.add_argument("-n", "--name", required=True)
    show.add_argument("-v", "--version", type=int)
    add_output(show)
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
    add_deploy_settings(deploy)
    deploy.set_defaults(handler=model_deploy)


def model_register(args: argparse.Namespace) -> int:
    from modelfleet.sdk.model import Model

    model = Model.register(
        workspace(args),
        args.path,
        args.name,
        tags=pairs(args.tag, "--tag"),
        properties=pairs(args.property, "--property"),
        description=args.description,
    )
    print_output(args, model.serialize(), f"registered {model.name}:{model.version}")
    return 0


def model_list(args: argparse.Namespace) -> int:
    from modelfleet.sdk.model import Model

    models = Model.list(workspace(args), name=args.name, latest=args.latest)
    rows = [f"{m.name}:{m.version}  {json.dumps(m.tags)}" for m in models]
    print_output(args, [m.serialize() for m in models], "\n".join(rows) or "no models")
    return 0


def model_show(args: argparse.Namespace) -> int:
    from modelfleet.sdk.model import Model

    model = Model(workspace(args), args.name, version=args.version)
    print_output(args, model.serialize(), json.dumps(model.serialize(), indent=2, default=str))
    return 0


def model_download(args: argparse.Namespace) -> int:
    from modelfleet.sdk.model import Model

    model = Model(workspace(args), args.name, version=args.version)
    print(model.download(args.target_dir, exist_ok=args.overwrite))
    return 0


def model_deploy(args: argparse.Namespace) -> int:
    from modelfleet.sdk.model import Model
    from modelfleet.spec import validate_service_name

    # everything the user typed is checked before anything is looked up or created
    validate_service_name(args.name)
    deploy_config = deploy_config_from_args(args)
    inference_config = inference_config_from_file(args.ic)
    ws = workspace(args)
    models = models_from_refs(ws, args.model)
    service = Model.deploy(ws, args.name, models, inference_config, deploy_config, overwrite=args.overwrite)
    if not args.no_wait:
        service.wait_for_deployment(show_output=True)
    print(f"scoring uri: {service.scoring_uri}")
    return 0
