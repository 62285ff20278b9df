"""``modelfleet model register|list|show|download|deploy``: the model registry."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from modelfleet.cli.common import (
    add_deploy_settings,
    add_output,
    deploy_config_from_args,
    inference_config_from_file,
    key_values,
    models_from_refs,
    pairs,
    print_output,
    shown,
    workspace,
)
from modelfleet.cli.completion import attach, model_names, model_refs
from modelfleet.errors import ModelfleetError
from modelfleet.spec import EnvironmentSpec


def register(groups: Any) -> None:
    model = groups.add_parser("model", help="registered models").add_subparsers(
        metavar="COMMAND", dest="subcommand", required=True
    )
    register = model.add_parser("register", help="register a file or folder as the next version")
    register.add_argument("-n", "--name", required=True, help="model name (a new name starts at version 1)")
    register.add_argument("-p", "--path", "--model-path", dest="path", required=True,
                          help="the file or folder to copy into the workspace")  # fmt: skip
    register.add_argument("-t", "--tag", action="append", metavar="KEY=VALUE", help="a tag, repeatable")
    register.add_argument("--property", action="append", metavar="KEY=VALUE", help="a property, repeatable")
    register.add_argument("-d", "--description", help="what the model is")
    add_output(register)
    register.set_defaults(handler=model_register)
    listing = model.add_parser("list", help="registered models")
    attach(listing.add_argument("-n", "--name", help="only versions of this model"), model_names)
    listing.add_argument("-l", "--latest", action="store_true", help="only the latest version of each model")
    add_output(listing)
    listing.set_defaults(handler=model_list)
    show = model.add_parser("show", help="one model version")
    attach(show.add_argument("-n", "--name", required=True, help="model name"), model_names)
    show.add_argument("-v", "--version", type=int, help="version (default: the latest)")
    add_output(show)
    show.set_defaults(handler=model_show)
    download = model.add_parser("download", help="copy a model version's files to a folder")
    attach(download.add_argument("-n", "--name", required=True, help="model name"), model_names)
    download.add_argument("-v", "--version", type=int, help="version (default: the latest)")
    download.add_argument("-t", "--target-dir", default=".", help="folder to copy into (default: the current one)")
    download.add_argument("--overwrite", action="store_true", help="replace files already in the target folder")
    download.set_defaults(handler=model_download)
    deploy = model.add_parser("deploy", help="deploy models as a service (v1 JSON config files)")
    deploy.add_argument("-n", "--name", required=True, help="service name")
    attach(deploy.add_argument("-m", "--model", action="append", required=True, metavar="MODEL:VERSION",
                               help="a model to serve, repeatable"), model_refs)  # fmt: skip
    deploy.add_argument("--ic", "--inference-config-file", dest="ic", required=True, metavar="FILE",
                        help="a v1 inferenceconfig.json: entry script, source folder, environment")  # fmt: skip
    deploy.add_argument("--dc", "--deploy-config-file", dest="dc", metavar="FILE",
                        help="a v1 deploymentconfig.json: the settings (flags below override it)")  # fmt: skip
    deploy.add_argument("--overwrite", action="store_true", help="replace a service of the same name")
    deploy.add_argument("--no-wait", action="store_true", help="return at once; do not wait for the deployment")
    deploy.add_argument("--compute-target", help="an attached Kubernetes cluster (default: the local cluster)")
    deploy.add_argument("--fail-on-vulnerable", action="store_true",
                        help="audit the environment first (pip-audit); refuse to deploy if vulnerable")  # fmt: skip
    deploy.add_argument("--no-audit", action="store_true",
                        help="skip the vulnerability warning after deploying (pip-audit, when installed)")  # fmt: skip
    add_deploy_settings(deploy)
    deploy.set_defaults(handler=model_deploy)
    package = model.add_parser("package", help="the service's image as a Dockerfile and build context (v1 package)")
    attach(package.add_argument("-m", "--model", action="append", required=True, metavar="MODEL:VERSION",
                                help="a model to put in the image, repeatable"), model_refs)  # fmt: skip
    package.add_argument("--ic", "--inference-config-file", dest="ic", required=True, metavar="FILE",
                         help="a v1 inferenceconfig.json: entry script, source folder, environment")  # fmt: skip
    package.add_argument("--output-path", required=True, metavar="DIR",
                         help="new or empty folder to write the Dockerfile and its context into")  # fmt: skip
    package.add_argument("--image-name", help="the image name the Dockerfile suggests (default modelfleet-package)")
    package.add_argument("--image-label", help="the image tag (default: the environment's hash, shortened)")
    package.set_defaults(handler=model_package)
    profile = model.add_parser("profile", help="measure CPU and memory on sample requests; recommend settings")
    profile.add_argument("-n", "--name", required=True, help="profile name")
    attach(profile.add_argument("-m", "--model", action="append", metavar="MODEL:VERSION",
                                help="a model to serve, repeatable"), model_refs)  # fmt: skip
    profile.add_argument("--ic", "--inference-config-file", dest="ic", required=True, metavar="FILE",
                         help="a v1 inferenceconfig.json: entry script, source folder, environment")  # fmt: skip
    profile.add_argument("--input-file", required=True, metavar="FILE",
                         help="sample request bodies, one JSON document a line")  # fmt: skip
    profile.add_argument("--cpu", type=float, help="cpu_cores of the temporary service (default 0.1)")
    profile.add_argument("--memory-in-gb", type=float, help="memory_gb of the temporary service (default 0.5)")
    add_output(profile)
    profile.set_defaults(handler=model_profile)


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
    rows = [f"{m.name}:{m.version}  {shown(m.tags)}" for m in models]
    print_output(args, [m.serialize() for m in models], "\n".join(rows) or "no models")
    return 0


def model_show(args: argparse.Namespace) -> int:
    from modelfleet.sdk.model import Model

    model = Model(workspace(args), args.name, version=args.version)
    print_output(args, model.serialize(), key_values(model.serialize()))
    return 0


def model_download(args: argparse.Namespace) -> int:
    from modelfleet.sdk.model import Model

    model = Model(workspace(args), args.name, version=args.version)
    print(model.download(args.target_dir, exist_ok=args.overwrite))
    return 0


def model_deploy(args: argparse.Namespace) -> int:
    from modelfleet.envs.audit import pip_audit_available
    from modelfleet.sdk.model import Model
    from modelfleet.spec import validate_service_name

    # everything the user typed is checked before anything is looked up or created
    validate_service_name(args.name)
    deploy_config = deploy_config_from_args(args)
    inference_config = inference_config_from_file(args.ic)
    ws = workspace(args)
    models = models_from_refs(ws, args.model)
    environment = inference_config.to_spec().environment or EnvironmentSpec(name="default")
    if args.fail_on_vulnerable:  # refused before anything is deployed
        vulnerable = known_vulnerabilities(ws, environment)
        if vulnerable:
            raise ModelfleetError(f"not deployed: {vulnerable} (--fail-on-vulnerable)")
    target = None
    if args.compute_target:
        from modelfleet.sdk.compute import ComputeTarget

        target = ComputeTarget(ws, args.compute_target)  # an unknown name: NotFound, nothing deployed
    service = Model.deploy(
        ws, args.name, models, inference_config, deploy_config, deployment_target=target, overwrite=args.overwrite
    )
    if not args.no_wait:
        service.wait_for_deployment(show_output=True)
    print(f"scoring uri: {service.scoring_uri}")
    if not args.fail_on_vulnerable and not args.no_wait and not args.no_audit and pip_audit_available():
        vulnerable = known_vulnerabilities(ws, environment)
        if vulnerable:
            print(f"warning: {vulnerable}; see `modelfleet env audit {environment.name}`", file=sys.stderr)
    return 0


def known_vulnerabilities(ws: Any, environment: EnvironmentSpec) -> str | None:
    """What pip-audit found in ``environment``, in one line; None when nothing was found (a
    check that could not be made is said on stderr as a warning)."""
    from modelfleet.control.environments import audit_environment

    try:
        report = audit_environment(ws.store, environment)
    except ModelfleetError as exc:  # pip-audit missing, or the interpreter unreadable
        print(f"warning: environment {environment.name!r} was not checked for vulnerabilities: {exc.message}",
              file=sys.stderr)  # fmt: skip
        return None
    if report.unreachable:
        print(f"warning: environment {environment.name!r} was not checked for vulnerabilities: {report.unreachable}",
              file=sys.stderr)  # fmt: skip
        return None
    if not report.findings:
        return None
    listed = "; ".join(f"{f.package} {f.version} ({f.id}, fixed in {', '.join(f.fix_versions) or 'none yet'})"
                       for f in report.findings)  # fmt: skip
    return f"environment {environment.name!r} has {len(report.findings)} known vulnerabilities: {listed}"


def model_package(args: argparse.Namespace) -> int:
    from modelfleet.sdk.model import Model

    ws = workspace(args)
    package = Model.package(
        ws,
        models_from_refs(ws, args.model),
        inference_config_from_file(args.ic),
        generate_dockerfile=True,
        image_name=args.image_name,
        image_label=args.image_label,
    )
    package.save(args.output_path)
    print(f"wrote {args.output_path}/Dockerfile and its build context")
    print(f"build it: docker build -t {package.image} {args.output_path}")
    return 0


def model_profile(args: argparse.Namespace) -> int:
    from modelfleet.sdk.model import Model

    ws = workspace(args)
    details = Model.profile(
        ws,
        args.name,
        models_from_refs(ws, args.model or []),
        inference_config_from_file(args.ic),
        args.input_file,
        cpu=args.cpu,
        memory_in_gb=args.memory_in_gb,
    ).get_details()
    text = (
        f"{details['name']}: {details['state']}, {details['successQueries']} of {details['totalQueries']} requests "
        f"answered; peak {details['maxUtilizedCpu']} CPUs, {details['maxUtilizedMemoryInGB']} GB\n"
        f"recommended: --cpu-cores {details['recommendedCpu']} --memory-gb {details['recommendedMemoryInGB']}"
    )
    print_output(args, details, text)
    return 0
