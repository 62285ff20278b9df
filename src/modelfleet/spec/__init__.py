"""Typed, validated configuration: the v1 deploy and inference settings as frozen values.

Everything that configures a service enters through here: the SDK's
``AksWebservice.deploy_configuration`` / ``LocalWebservice.deploy_configuration`` /
``InferenceConfig`` / ``Environment``, the CLI's v1 ``deploymentconfig.json`` and
``inferenceconfig.json`` files, and the workspace store (``to_dict``/``from_dict``). Each value
is checked once, in ``__post_init__``; a bad one raises ``ConfigError`` naming the field, the
allowed range and the value found. Stdlib only: router and replica processes import this.

    deploy.py       ProbeSpec, AutoscaleSpec, DeploySpec (the table of deploy settings, declared
                    once each); aks_/local_deploy_configuration
    fields.py       ``setting()``: a field that carries its kind, bounds, v1 JSON path and help
    environment.py  EnvironmentSpec (pip, conda, v1 JSON) and the conda-file reader
    inference.py    InferenceSpec (entry script, source folder, environment)
    names.py        service and model name rules, ``name:version`` references
    notes.py        v1 keys that mean nothing here
    checks.py       the shared value checks
"""

from modelfleet.spec.checks import COMPUTE_TYPES, DEFAULT_MAX_BODY_BYTES
from modelfleet.spec.deploy import (
    AutoscaleSpec,
    DeploySpec,
    ProbeSpec,
    aks_deploy_configuration,
    local_deploy_configuration,
)
from modelfleet.spec.environment import EnvironmentSpec, parse_conda_yaml
from modelfleet.spec.inference import InferenceSpec
from modelfleet.spec.names import parse_model_ref, validate_model_name, validate_service_name
from modelfleet.spec.notes import v1_notes

__all__ = [
    "COMPUTE_TYPES",
    "DEFAULT_MAX_BODY_BYTES",
    "AutoscaleSpec",
    "DeploySpec",
    "EnvironmentSpec",
    "InferenceSpec",
    "ProbeSpec",
    "aks_deploy_configuration",
    "local_deploy_configuration",
    "parse_conda_yaml",
    "parse_model_ref",
    "v1_notes",
    "validate_model_name",
    "validate_service_name",
]
