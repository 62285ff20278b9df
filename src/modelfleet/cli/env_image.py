"""``modelfleet env image-context`` and ``env build-image``: an environment's image.

    modelfleet env image-context NAME OUT_DIR [--repository R] [--base-image IMG] [--gpu]
    modelfleet env build-image NAME --registry R [--push] [--builder docker|podman|buildah]

``build-image`` writes the context, asks the registry for the hash tag (``envs/registry.py``)
and builds only on a miss, as v1 asked ACR; with no builder on PATH it prints the exact
commands and exits with status 1. The registry's credential for the look-up: the user name
from ``--registry-username``, the password or token from ``MODELFLEET_REGISTRY_PASSWORD``
(never a flag: it would show in the process list). The builder pushes with its own login.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from modelfleet.cli.common import workspace
from modelfleet.cli.completion import attach, environment_names
from modelfleet.errors import BuildError, ConfigError, NotFound

PASSWORD_VARIABLE = "MODELFLEET_REGISTRY_PASSWORD"


def add_image_commands(env: Any) -> None:
    image = env.add_parser("image-context", help="Dockerfile and build context, tagged with the environment's hash")
    _environment_arguments(image)
    image.add_argument("out_dir", metavar="OUT_DIR", help="new or empty folder to write the context into")
    image.add_argument("--repository", default="modelfleet-env", help="image repository (default modelfleet-env)")
    image.set_defaults(handler=env_image_context)
    build = env.add_parser(
        "build-image", help="build the environment's image unless the registry has its hash tag (--push: push it)"
    )
    _environment_arguments(build)
    build.add_argument("--registry", required=True, help="registry host[:port][/path], e.g. myacr.azurecr.io")
    build.add_argument("--repository", default="modelfleet-env", help="repository in it (default modelfleet-env)")
    build.add_argument("--push", action="store_true", help="push the image after building it")
    build.add_argument("--builder", choices=["docker", "podman", "buildah"], help="default: the first on PATH")
    build.add_argument("--context", metavar="DIR", help="new or empty folder for the context (default: a temp one)")
    build.add_argument("--registry-username", help=f"user for the look-up; password or token in ${PASSWORD_VARIABLE}")
    build.add_argument("--insecure", action="store_true", help="plain http to a registry that is not on loopback")
    build.set_defaults(handler=env_build_image)


def _environment_arguments(sub: argparse.ArgumentParser) -> None:
    attach(sub.add_argument("name", metavar="NAME", help="environment name (or hash)"), environment_names)
    sub.add_argument("--base-image", help="FROM this image (default: the environment's docker.base_image, v1's)")
    sub.add_argument("--gpu", action="store_true", help="the CUDA base image a service with gpu_cores gets")


def environment_named(ws: Any, name: str) -> Any:
    """The one environment called ``name`` (or with that hash prefix) among the workspace's
    services and cache, of any kind: built, Environment("env") or user-managed."""
    from modelfleet import envs
    from modelfleet.control.environments import specs_named
    from modelfleet.spec import EnvironmentSpec

    found = dict(specs_named(ws.store, name))
    for record in ws.store.list_services():  # specs_named leaves out the ones nothing is built for
        spec = EnvironmentSpec.from_dict(record.config.get("environment") or {"name": "default"})
        if spec.name == name:
            found.setdefault(envs.canonicalize(spec).hash, spec)
    if not found:
        raise NotFound(
            f"no environment named {name!r} in this workspace's services or cache; "
            "deploy a service with it first, or see `modelfleet env list`"
        )
    if len(found) > 1:
        raise ConfigError(
            f"{len(found)} environments are named {name!r} (hashes {', '.join(h[:12] for h in found)}); "
            "pass the hash instead of the name"
        )
    return next(iter(found.values()))


def env_image_context(args: argparse.Namespace) -> int:
    from modelfleet.envs.image import write_image_context

    spec = environment_named(workspace(args), args.name)
    out_dir = Path(args.out_dir)
    tag = write_image_context(spec, out_dir, args.repository, base_image=args.base_image, gpu=args.gpu)
    print(f"wrote {out_dir / 'Dockerfile'} and its build context")
    print(f"image tag: {tag}")
    print(f"build it: docker build -t {tag} {out_dir}")
    return 0


def env_build_image(args: argparse.Namespace) -> int:
    from modelfleet.envs import builder
    from modelfleet.envs.image import write_image_context
    from modelfleet.envs.registry import Credential, manifest_exists, parse_reference

    registry = args.registry.rstrip("/")
    if "://" in registry or not registry:
        raise ConfigError(f"--registry is host[:port][/path] with no scheme, e.g. myacr.azurecr.io (got {registry!r})")
    spec = environment_named(workspace(args), args.name)
    credential = None
    if args.registry_username:
        password = os.environ.get(PASSWORD_VARIABLE)
        if not password:
            raise ConfigError(f"--registry-username needs the password or token in ${PASSWORD_VARIABLE}")
        credential = Credential(args.registry_username, password)
    path = builder.find_builder(args.builder)  # a wrong --builder fails before any work
    context = Path(args.context) if args.context else Path(tempfile.mkdtemp(prefix="modelfleet-image-"))
    tag = write_image_context(spec, context, f"{registry}/{args.repository}", base_image=args.base_image, gpu=args.gpu)
    if manifest_exists(parse_reference(tag), credential, insecure=args.insecure):
        print(f"{tag} is in the registry already; nothing to build")
        return 0
    print(f"{tag} is not in the registry; its context is in {context}")
    if path is None:
        wanted = args.builder or "docker, podman or buildah"
        print("run, where a container builder runs:")
        # the push too, with or without --push: a cluster pulls the image from the registry
        for argv in builder.commands(args.builder or "docker", tag, context, True, args.insecure):
            print(f"  {builder.shown(argv)}")
        print('or deploy to a Kubernetes target attached with image_build="kaniko" (an in-cluster build)')
        raise BuildError(f"no container builder on PATH (looked for {wanted}); the commands to run are above")
    steps = builder.commands(path, tag, context, args.push, args.insecure)
    for argv in steps:
        print(f"$ {builder.shown(argv)}", flush=True)
        builder.run(argv)
    print(f"built {tag}" + (" and pushed it" if args.push else f"; push it: {builder.shown([path, 'push', tag])}"))
    return 0
