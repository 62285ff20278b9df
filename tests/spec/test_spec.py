"""spec.py: v1 defaults, validation messages, cross-field rules, v1 JSON files, round trips."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modelfleet.errors import ConfigError
from modelfleet.spec import (
    DEFAULT_MAX_BODY_BYTES,
    AutoscaleSpec,
    DeploySpec,
    EnvironmentSpec,
    InferenceSpec,
    ProbeSpec,
    aks_deploy_configuration,
    local_deploy_configuration,
    parse_conda_yaml,
    parse_model_ref,
    v1_notes,
    validate_service_name,
)

# --------------------------------------------------------------------------- v1 defaults

# azureml-core AksWebservice.deploy_configuration docstring and the v1 CLI's deploymentconfig table.
V1_DEFAULTS = {
    "autoscale_enabled": True,
    "autoscale_min_replicas": 1,
    "autoscale_max_replicas": 10,
    "autoscale_refresh_seconds": 1,
    "autoscale_target_utilization": 70,
    "collect_model_data": False,
    "auth_enabled": True,
    "cpu_cores": 0.1,
    "memory_gb": 0.5,
    "enable_app_insights": False,
    "scoring_timeout_ms": 60000,
    "replica_max_concurrent_requests": 1,
    "max_request_wait_time": 500,
    "num_replicas": None,
    "primary_key": None,
    "secondary_key": None,
    "description": None,
    "gpu_cores": 0,
    "period_seconds": 10,
    "initial_delay_seconds": 310,
    "timeout_seconds": 2,
    "success_threshold": 1,
    "failure_threshold": 3,
    "namespace": None,
    "token_auth_enabled": False,
    "compute_target_name": None,
    "cpu_cores_limit": None,
    "memory_gb_limit": None,
    "blobfuse_enabled": True,
}


@pytest.mark.parametrize(
    "build", [DeploySpec, aks_deploy_configuration], ids=["DeploySpec", "aks_deploy_configuration"]
)
def test_every_default_is_v1s(build):
    spec = build()
    for name, value in V1_DEFAULTS.items():
        assert getattr(spec, name) == value, name
    assert spec.tags == {} and spec.properties == {}
    assert spec.compute_type == "aks"
    # modelfleet's additions
    assert spec.autoscale_down_delay_seconds == 60
    assert spec.max_body_bytes == DEFAULT_MAX_BODY_BYTES == 100 * 1024 * 1024
    assert spec.port is None
    assert spec.initial_replicas() == 1


def test_nested_defaults_match_flat_names():
    assert ProbeSpec() == ProbeSpec(10, 310, 2, 1, 3)
    assert AutoscaleSpec() == AutoscaleSpec(True, 1, 10, 1, 70, 60)


def test_initial_replicas_fixed_and_autoscaled():
    assert aks_deploy_configuration(num_replicas=3).initial_replicas() == 3
    assert aks_deploy_configuration(autoscale_min_replicas=2, autoscale_max_replicas=5).initial_replicas() == 2


def test_design_example_is_accepted():
    dc = aks_deploy_configuration(
        cpu_cores=1,
        memory_gb=1,
        autoscale_enabled=True,
        autoscale_target_utilization=70,
        autoscale_min_replicas=1,
        autoscale_max_replicas=4,
    )
    assert dc.cpu_cores == 1.0 and isinstance(dc.cpu_cores, float)
    assert dc.autoscale == AutoscaleSpec(enabled=True, min_replicas=1, max_replicas=4)


# --------------------------------------------------------------------------- ranges and types


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"autoscale_target_utilization": 150},
            "autoscale_target_utilization must be between 1 and 100 (got 150)",
        ),
        (
            {"autoscale_target_utilization": 0},
            "autoscale_target_utilization must be between 1 and 100 (got 0)",
        ),
        ({"autoscale_min_replicas": 0}, "autoscale_min_replicas must be at least 1 (got 0)"),
        ({"autoscale_max_replicas": -2}, "autoscale_max_replicas must be at least 1 (got -2)"),
        ({"autoscale_refresh_seconds": 0}, "autoscale_refresh_seconds must be at least 1 (got 0)"),
        ({"autoscale_down_delay_seconds": -1}, "autoscale_down_delay_seconds must be at least 0 (got -1)"),
        ({"cpu_cores": 0}, "cpu_cores must be greater than 0 (got 0)"),
        ({"cpu_cores": -0.5}, "cpu_cores must be greater than 0 (got -0.5)"),
        ({"memory_gb": 0.0}, "memory_gb must be greater than 0 (got 0.0)"),
        ({"memory_gb": float("nan")}, "memory_gb must be greater than 0 (got nan)"),
        ({"gpu_cores": -1}, "gpu_cores must be at least 0 (got -1)"),
        ({"num_replicas": 0}, "num_replicas must be at least 1 (got 0)"),
        ({"scoring_timeout_ms": 0}, "scoring_timeout_ms must be at least 1 (got 0)"),
        (
            {"replica_max_concurrent_requests": 0},
            "replica_max_concurrent_requests must be at least 1 (got 0)",
        ),
        ({"max_request_wait_time": -1}, "max_request_wait_time must be at least 0 (got -1)"),
        ({"max_body_bytes": 0}, "max_body_bytes must be at least 1 (got 0)"),
        ({"period_seconds": 0}, "period_seconds must be at least 1 (got 0)"),
        ({"initial_delay_seconds": 0}, "initial_delay_seconds must be at least 1 (got 0)"),
        ({"timeout_seconds": -3}, "timeout_seconds must be at least 1 (got -3)"),
        ({"success_threshold": 0}, "success_threshold must be at least 1 (got 0)"),
        ({"failure_threshold": 0}, "failure_threshold must be at least 1 (got 0)"),
        (
            {"cpu_cores": 1, "cpu_cores_limit": 0.5},
            "cpu_cores_limit must be greater than or equal to cpu_cores",
        ),
        (
            {"memory_gb": 2, "memory_gb_limit": 1},
            "memory_gb_limit must be greater than or equal to memory_gb",
        ),
        ({"cpu_cores_limit": -1}, "cpu_cores_limit must be greater than 0 (got -1)"),
        ({"namespace": "Prod"}, "namespace must be a Kubernetes namespace"),
        ({"namespace": "-prod"}, "(got '-prod')"),
        ({"namespace": "a" * 64}, "namespace must be a Kubernetes namespace"),
    ],
)
def test_range_errors_name_field_range_and_value(kwargs, expected):
    with pytest.raises(ConfigError) as err:
        aks_deploy_configuration(**kwargs)
    assert expected in str(err.value)
    assert err.value.http_status == 400


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"num_replicas": True}, "num_replicas must be an integer (got bool True)"),
        ({"gpu_cores": "1"}, "gpu_cores must be an integer (got str '1')"),
        ({"autoscale_max_replicas": 2.0}, "autoscale_max_replicas must be an integer (got float 2.0)"),
        ({"cpu_cores": "1"}, "cpu_cores must be a number (got str '1')"),
        ({"memory_gb": True}, "memory_gb must be a number (got bool True)"),
        ({"auth_enabled": "yes"}, "auth_enabled must be true or false (got str 'yes')"),
        ({"autoscale_enabled": 1}, "autoscale_enabled must be true or false (got int 1)"),
        ({"collect_model_data": None, "enable_app_insights": 0}, "enable_app_insights must be true or false"),
        ({"primary_key": ""}, "primary_key must be a non-empty string or None (got str '')"),
        ({"tags": {"k": 1}}, "tags must map strings to strings (got 'k': int 1)"),
        ({"properties": ["a"]}, "properties must be a dict of strings to strings (got list ['a'])"),
    ],
)
def test_type_errors_name_the_type(kwargs, expected):
    with pytest.raises(ConfigError) as err:
        aks_deploy_configuration(**kwargs)
    assert expected in str(err.value)


def test_boundary_values_are_accepted():
    spec = aks_deploy_configuration(
        autoscale_target_utilization=100,
        autoscale_min_replicas=3,
        autoscale_max_replicas=3,
        autoscale_down_delay_seconds=0,
        max_request_wait_time=0,
        gpu_cores=0,
        period_seconds=1,
        initial_delay_seconds=1,
        cpu_cores=2,
        cpu_cores_limit=2,
        namespace="a" * 63,
    )
    assert spec.autoscale.target_utilization == 100 and spec.max_request_wait_time == 0
    assert aks_deploy_configuration(autoscale_target_utilization=1).autoscale.target_utilization == 1


def test_tags_are_copied_not_shared():
    tags = {"team": "a"}
    spec = aks_deploy_configuration(tags=tags)
    tags["team"] = "b"
    assert spec.tags == {"team": "a"}


# --------------------------------------------------------------------------- cross-field rules


def test_autoscale_enabled_with_num_replicas_is_refused_as_v1():
    with pytest.raises(ConfigError, match=r"autoscale enabled and num_replicas provided \(num_replicas=3\)"):
        aks_deploy_configuration(autoscale_enabled=True, num_replicas=3)


def test_num_replicas_alone_turns_autoscale_off_as_v1():
    spec = aks_deploy_configuration(num_replicas=3)
    assert spec.autoscale.enabled is False and spec.num_replicas == 3


def test_autoscale_disabled_without_num_replicas_is_refused_as_v1():
    with pytest.raises(ConfigError, match="autoscale disabled but num_replicas not provided"):
        aks_deploy_configuration(autoscale_enabled=False)
    with pytest.raises(ConfigError, match="autoscale disabled but num_replicas not provided"):
        DeploySpec(autoscale=AutoscaleSpec(enabled=False))


@pytest.mark.parametrize(
    "name",
    [
        "autoscale_min_replicas",
        "autoscale_max_replicas",
        "autoscale_refresh_seconds",
        "autoscale_target_utilization",
        "autoscale_down_delay_seconds",
    ],
)
def test_autoscale_values_without_autoscaling_are_refused_as_v1(name):
    with pytest.raises(ConfigError, match=f"{name} provided without enabling autoscaling"):
        aks_deploy_configuration(num_replicas=2, **{name: 5})
    with pytest.raises(ConfigError, match=f"{name} provided without enabling autoscaling"):
        aks_deploy_configuration(autoscale_enabled=False, num_replicas=2, **{name: 5})


def test_autoscale_values_with_autoscale_on_by_default_are_accepted():
    # v1 refused this although autoscaling is on by default; documented leniency.
    assert aks_deploy_configuration(autoscale_max_replicas=4).autoscale.max_replicas == 4


def test_min_above_max_is_refused():
    with pytest.raises(
        ConfigError, match=r"autoscale_min_replicas \(5\) cannot be greater than autoscale_max_replicas \(4\)"
    ):
        aks_deploy_configuration(autoscale_min_replicas=5, autoscale_max_replicas=4)


def test_key_and_token_auth_together_are_refused():
    with pytest.raises(ConfigError, match="cannot enable both key and token auth"):
        aks_deploy_configuration(auth_enabled=True, token_auth_enabled=True)


def test_token_auth_alone_turns_key_auth_off():
    spec = aks_deploy_configuration(token_auth_enabled=True)
    assert (spec.auth_enabled, spec.token_auth_enabled) == (False, True)


def test_port_only_for_local():
    with pytest.raises(ConfigError, match="port applies only to compute_type 'local'"):
        DeploySpec(port=8080)


# --------------------------------------------------------------------------- local


def test_local_deploy_configuration_matches_v1_local():
    spec = local_deploy_configuration()
    assert spec.compute_type == "local"
    assert spec.num_replicas == 1 and spec.initial_replicas() == 1
    assert spec.autoscale.enabled is False
    assert spec.auth_enabled is False and spec.token_auth_enabled is False
    assert spec.port is None
    assert local_deploy_configuration(port=6789).port == 6789
    assert local_deploy_configuration(port=0).port is None  # v1 treated 0 as "not given"


@pytest.mark.parametrize("port", [65536, -1, "80", True, 80.0])
def test_local_port_range_and_type(port):
    with pytest.raises(ConfigError, match="port must be"):
        local_deploy_configuration(port=port)


def test_local_runs_exactly_one_replica():
    with pytest.raises(ConfigError, match="compute_type 'local' runs exactly one replica"):
        local_deploy_configuration().replace(num_replicas=2)


def test_compute_type_is_checked():
    with pytest.raises(ConfigError, match="compute_type must be one of aks, kubernetes, local"):
        DeploySpec(compute_type="aci")
    assert aks_deploy_configuration(compute_type="kubernetes").compute_type == "kubernetes"


# --------------------------------------------------------------------------- storage form


def _full_spec() -> DeploySpec:
    return aks_deploy_configuration(
        autoscale_min_replicas=2,
        autoscale_max_replicas=6,
        autoscale_refresh_seconds=3,
        autoscale_target_utilization=55,
        autoscale_down_delay_seconds=120,
        collect_model_data=True,
        cpu_cores=1.5,
        memory_gb=2,
        cpu_cores_limit=2,
        memory_gb_limit=4,
        gpu_cores=1,
        enable_app_insights=True,
        scoring_timeout_ms=5000,
        replica_max_concurrent_requests=4,
        max_request_wait_time=250,
        primary_key="p" * 32,
        secondary_key="s" * 32,
        tags={"team": "risk"},
        properties={"owner": "me"},
        description="regressor",
        period_seconds=5,
        initial_delay_seconds=20,
        timeout_seconds=3,
        success_threshold=1,
        failure_threshold=5,
        namespace="prod",
        compute_target_name="aks-1",
        blobfuse_enabled=False,
        max_body_bytes=1024,
    )


def test_to_dict_from_dict_round_trips_exactly_with_keys():
    spec = _full_spec()
    d = spec.to_dict(include_keys=True)
    again = DeploySpec.from_dict(json.loads(json.dumps(d)))
    assert again == spec
    assert again.to_dict(include_keys=True) == d


def test_to_dict_leaves_keys_out_by_default():
    spec = _full_spec()
    d = spec.to_dict()
    assert "primary_key" not in d and "secondary_key" not in d
    assert "p" * 32 not in json.dumps(d)
    assert DeploySpec.from_dict(d) == spec.replace(primary_key=None, secondary_key=None)


def test_repr_hides_keys():
    assert "p" * 32 not in repr(_full_spec())


def test_from_dict_defaults_missing_and_refuses_unknown():
    assert DeploySpec.from_dict({}) == DeploySpec()
    with pytest.raises(ConfigError, match=r"unknown key 'cpu' in deploy spec; known keys: compute_type, cpu_cores"):
        DeploySpec.from_dict({"cpu": 1})
    with pytest.raises(ConfigError, match=r"unknown key 'max' in autoscale; known keys: enabled, min_replicas"):
        DeploySpec.from_dict({"autoscale": {"max": 1}})
    with pytest.raises(ConfigError, match="autoscale_target_utilization must be between 1 and 100"):
        DeploySpec.from_dict({"autoscale": {"target_utilization": 101}})


def test_local_spec_round_trips():
    spec = local_deploy_configuration(port=5001)
    assert DeploySpec.from_dict(spec.to_dict()) == spec
    assert DeploySpec.from_v1_json(spec.to_v1_json()) == spec


# --------------------------------------------------------------------------- replace


def test_replace_takes_fields_and_flat_v1_names_and_validates_again():
    spec = aks_deploy_configuration()
    new = spec.replace(cpu_cores=2, autoscale_max_replicas=3, period_seconds=7)
    assert (new.cpu_cores, new.autoscale.max_replicas, new.liveness.period_seconds) == (2.0, 3, 7)
    assert spec.cpu_cores == 0.1  # the original is untouched
    with pytest.raises(ConfigError, match=r"autoscale_target_utilization must be between 1 and 100 \(got 150\)"):
        spec.replace(autoscale_target_utilization=150)
    with pytest.raises(ConfigError, match="unknown setting 'cpu'; known settings:"):
        spec.replace(cpu=2)


def test_replace_switches_between_fixed_and_autoscaled():
    fixed = aks_deploy_configuration().replace(num_replicas=3)
    assert fixed.autoscale.enabled is False and fixed.initial_replicas() == 3
    scaled = fixed.replace(autoscale_enabled=True, autoscale_min_replicas=2)
    assert scaled.num_replicas is None and scaled.initial_replicas() == 2
    with pytest.raises(ConfigError, match="autoscale enabled and num_replicas provided"):
        fixed.replace(autoscale_enabled=True, num_replicas=2)


def test_replace_switches_auth_kind():
    token = aks_deploy_configuration().replace(token_auth_enabled=True)
    assert (token.auth_enabled, token.token_auth_enabled) == (False, True)
    key = token.replace(auth_enabled=True)
    assert (key.auth_enabled, key.token_auth_enabled) == (True, False)


# --------------------------------------------------------------------------- deploymentconfig.json

# The example from the v1 docs (machine-learning-service-aks-deploy-config.md), verbatim.
V1_DOCS_DEPLOY = """
{
    "computeType": "aks",
    "autoScaler":
    {
        "autoscaleEnabled": true,
        "minReplicas": 1,
        "maxReplicas": 3,
        "refreshPeriodInSeconds": 1,
        "targetUtilization": 70
    },
    "dataCollection":
    {
        "storageEnabled": true
    },
    "authEnabled": true,
    "containerResourceRequirements":
    {
        "cpu": 0.5,
        "memoryInGB": 1.0
    }
}
"""

V1_FULL_DEPLOY = {
    "computeType": "AKS",
    "numReplicas": 2,
    "autoScaler": {"autoscaleEnabled": False},
    "containerResourceRequirements": {"cpu": 1, "memoryInGB": 2, "cpuLimit": 2, "memoryInGBLimit": 4},
    "gpuCores": 1,
    "authEnabled": False,
    "tokenAuthEnabled": True,
    "appInsightsEnabled": True,
    "dataCollection": {"storageEnabled": False, "eventHubEnabled": False},
    "scoringTimeoutMs": 5000,
    "maxConcurrentRequestsPerContainer": 2,
    "maxQueueWaitMs": 1000,
    "keys": {"primaryKey": "primary-abc", "secondaryKey": "secondary-def"},
    "livenessProbeRequirements": {
        "periodSeconds": 5,
        "initialDelaySeconds": 30,
        "timeoutSeconds": 4,
        "successThreshold": 1,
        "failureThreshold": 6,
    },
    "namespace": "ml-prod",
    "computeTargetName": "aks-west",
}


def test_v1_docs_deploy_example_reads_as_is():
    spec = DeploySpec.from_v1_json(json.loads(V1_DOCS_DEPLOY))
    assert spec.autoscale == AutoscaleSpec(enabled=True, min_replicas=1, max_replicas=3)
    assert spec.collect_model_data is True and spec.auth_enabled is True
    assert (spec.cpu_cores, spec.memory_gb) == (0.5, 1.0)
    assert spec.scoring_timeout_ms == 60000  # absent keys keep v1 defaults


def test_v1_full_deploy_file_reads_every_key():
    spec = DeploySpec.from_v1_json(V1_FULL_DEPLOY)
    assert spec.compute_type == "aks"  # computeType is case-insensitive, as in v1
    assert spec.num_replicas == 2 and spec.autoscale.enabled is False
    assert (spec.cpu_cores, spec.memory_gb, spec.cpu_cores_limit, spec.memory_gb_limit) == (
        1.0,
        2.0,
        2.0,
        4.0,
    )
    assert spec.gpu_cores == 1
    assert (spec.auth_enabled, spec.token_auth_enabled, spec.enable_app_insights) == (False, True, True)
    assert (spec.scoring_timeout_ms, spec.replica_max_concurrent_requests, spec.max_request_wait_time) == (
        5000,
        2,
        1000,
    )
    assert (spec.primary_key, spec.secondary_key) == ("primary-abc", "secondary-def")
    assert spec.liveness == ProbeSpec(5, 30, 4, 1, 6)
    assert (spec.namespace, spec.compute_target_name) == ("ml-prod", "aks-west")


def test_v1_json_nulls_mean_not_given():
    spec = DeploySpec.from_v1_json({"computeType": "aks", "numReplicas": None, "keys": None, "autoScaler": None})
    assert spec == DeploySpec()


def test_v1_json_gpu_in_either_place():
    assert DeploySpec.from_v1_json({"computeType": "aks", "containerResourceRequirements": {"gpu": 2}}).gpu_cores == 2
    with pytest.raises(ConfigError, match="gpu given twice with different values"):
        DeploySpec.from_v1_json({"computeType": "aks", "gpuCores": 1, "containerResourceRequirements": {"gpu": 2}})


def test_v1_json_round_trip():
    spec = _full_spec()
    assert DeploySpec.from_v1_json(json.loads(json.dumps(spec.to_v1_json(include_keys=True)))) == spec
    without = spec.to_v1_json()
    assert "keys" not in without
    assert DeploySpec.from_v1_json(without) == spec.replace(primary_key=None, secondary_key=None)
    fixed = DeploySpec.from_v1_json(V1_FULL_DEPLOY)
    assert DeploySpec.from_v1_json(fixed.to_v1_json(include_keys=True)) == fixed


def test_v1_json_errors_name_the_json_key():
    with pytest.raises(ConfigError) as err:
        DeploySpec.from_v1_json({"computeType": "aks", "autoScaler": {"targetUtilization": 150}})
    assert str(err.value) == (
        "autoScaler.targetUtilization in deploymentconfig.json: "
        "autoscale_target_utilization must be between 1 and 100 (got 150)"
    )
    with pytest.raises(ConfigError, match=r"^containerResourceRequirements.cpuLimit in deploymentconfig.json"):
        DeploySpec.from_v1_json({"computeType": "aks", "containerResourceRequirements": {"cpu": 1, "cpuLimit": 0.5}})
    with pytest.raises(ConfigError, match=r"^deploymentconfig.json: autoscale enabled and num_replicas provided"):
        DeploySpec.from_v1_json({"computeType": "aks", "numReplicas": 2, "autoScaler": {"autoscaleEnabled": True}})
    with pytest.raises(ConfigError, match="numReplicas in deploymentconfig.json: num_replicas must be an integer"):
        DeploySpec.from_v1_json({"computeType": "aks", "numReplicas": "2"})


def test_v1_json_unknown_keys_name_the_key_and_the_known_ones():
    with pytest.raises(ConfigError) as err:
        DeploySpec.from_v1_json({"computeType": "aks", "autoscaleEnabled": True})
    message = str(err.value)
    assert "unknown key 'autoscaleEnabled' in deploymentconfig.json" in message
    assert "autoScaler" in message and "numReplicas" in message
    with pytest.raises(ConfigError, match=r"unknown key 'memory' in containerResourceRequirements; known keys: cpu"):
        DeploySpec.from_v1_json({"computeType": "aks", "containerResourceRequirements": {"memory": 1}})
    with pytest.raises(ConfigError, match=r"autoScaler must be an object \(got list"):
        DeploySpec.from_v1_json({"computeType": "aks", "autoScaler": []})


def test_v1_json_compute_types():
    with pytest.raises(ConfigError, match="computeType is required"):
        DeploySpec.from_v1_json({"authEnabled": True})
    with pytest.raises(ConfigError, match="computeType 'aci' is not supported"):
        DeploySpec.from_v1_json({"computeType": "ACI"})
    local = DeploySpec.from_v1_json({"computeType": "local", "port": 32267})
    assert local == local_deploy_configuration(port=32267)
    with pytest.raises(ConfigError, match="key 'authEnabled' does not apply to computeType 'local'"):
        DeploySpec.from_v1_json({"computeType": "local", "authEnabled": True})
    with pytest.raises(ConfigError, match="port applies only to computeType 'local'"):
        DeploySpec.from_v1_json({"computeType": "aks", "port": 80})


def test_v1_notes_for_deploy():
    assert v1_notes(json.loads(V1_DOCS_DEPLOY), "deploy") == []
    notes = v1_notes(V1_FULL_DEPLOY | {"dataCollection": {"eventHubEnabled": True}}, "deploy")
    assert [n.split(":")[0] for n in notes] == ["appInsightsEnabled", "dataCollection.eventHubEnabled"]


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["abc", "a" * 32, "my-service-2", "a1b", "x-y"])
def test_good_service_names(name):
    assert validate_service_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "ab",
        "a" * 33,
        "MyService",
        "2service",
        "my_service",
        "service-",
        "-service",
        "my.service",
        "",
        None,
        123,
    ],
)
def test_bad_service_names_state_rule_and_value(name):
    with pytest.raises(ConfigError) as err:
        validate_service_name(name)
    assert "3-32 characters of lowercase letters, digits and dashes" in str(err.value)
    assert f"(got {name!r})" in str(err.value)


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("regressor:3", ("regressor", 3)),
        ("regressor", ("regressor", None)),
        ("my.model_v2-a:12", ("my.model_v2-a", 12)),
    ],
)
def test_parse_model_ref(ref, expected):
    assert parse_model_ref(ref) == expected


@pytest.mark.parametrize("ref", ["name:", "name:abc", "name:0", "name:-1", ":3", "", "name:1.5", "a:b:3", "_x:1"])
def test_parse_model_ref_refuses(ref):
    with pytest.raises(ConfigError, match="model (name|version) must"):
        parse_model_ref(ref)


# --------------------------------------------------------------------------- environment

CONDA_YAML = """\
# Conda environment specification.
name: project_environment
dependencies:
  # The python interpreter version.
- python=3.8.10
- pip=20.2.4
- conda-forge::numpy
- pip:
  - azureml-defaults
  - scikit-learn==1.0.2   # pinned
  - git+https://example.com/pkg.git#egg=pkg
- pandas
channels: [anaconda, conda-forge]
variables:
  OMP_NUM_THREADS: "1"
"""


def test_conda_yaml_subset():
    parsed = parse_conda_yaml(CONDA_YAML)
    assert parsed == {
        "name": "project_environment",
        "dependencies": [
            "python=3.8.10",
            "pip=20.2.4",
            "conda-forge::numpy",
            {"pip": ["azureml-defaults", "scikit-learn==1.0.2", "git+https://example.com/pkg.git#egg=pkg"]},
            "pandas",
        ],
        "channels": ["anaconda", "conda-forge"],
        "variables": {"OMP_NUM_THREADS": "1"},
    }
    indented = "dependencies:\n  - python=3.9\n  - pip:\n    - numpy\n  - scipy\n"
    assert parse_conda_yaml(indented) == {"dependencies": ["python=3.9", {"pip": ["numpy"]}, "scipy"]}


def test_conda_yaml_refuses_what_it_cannot_read():
    with pytest.raises(ConfigError, match=r"env.yml, line 2: nested mapping 'foo: bar' is not supported"):
        parse_conda_yaml("dependencies:\n- foo: bar\n", "env.yml")
    with pytest.raises(ConfigError, match="line 1: cannot read"):
        parse_conda_yaml("{name: x}\n")


def test_environment_from_conda():
    env = EnvironmentSpec.from_conda_yaml("env", CONDA_YAML)
    assert env.python_version == "3.8.10"
    assert env.pip_requirements == (
        "azureml-defaults",
        "scikit-learn==1.0.2",
        "git+https://example.com/pkg.git#egg=pkg",
    )
    assert env.conda_only_packages == ("conda-forge::numpy", "pandas")  # pip itself is implied
    assert env.conda_channels == ("anaconda", "conda-forge")
    assert env.environment_variables == {"OMP_NUM_THREADS": "1"}
    for dep, version in [
        ("python", None),
        ("python==3.10", "3.10"),
        ("python 3.9", "3.9"),
        ("python=3.8.*", "3.8"),
    ]:
        assert EnvironmentSpec.from_conda("e", {"dependencies": [dep]}).python_version == version
    with pytest.raises(ConfigError, match="pin the Python version as python=3.X"):
        EnvironmentSpec.from_conda("e", {"dependencies": ["python>=3.8"]})


def test_environment_round_trip_and_rules():
    env = EnvironmentSpec(
        name="env",
        version="2",
        pip_requirements=["numpy==1.26", "scikit-learn"],
        python_version="3.11",
        environment_variables={"A": "1"},
    )
    assert env.pip_requirements == ("numpy==1.26", "scikit-learn")  # lists become tuples
    assert EnvironmentSpec.from_dict(json.loads(json.dumps(env.to_dict()))) == env
    assert EnvironmentSpec.from_dict({"name": "default"}).python_executable is None
    with pytest.raises(ConfigError, match=r"python_executable \(user-managed\) cannot be combined"):
        EnvironmentSpec(name="e", python_executable="/usr/bin/python3", python_version="3.11")
    # a user-managed interpreter with requirements: they are what it must already satisfy
    assert EnvironmentSpec(name="e", python_executable="/usr/bin/python3", pip_requirements=("numpy",))
    with pytest.raises(ConfigError, match=r"python_version must look like 3.11 or 3.11.4 \(got '3.x'\)"):
        EnvironmentSpec(name="e", python_version="3.x")
    with pytest.raises(ConfigError, match="environment variable name must be non-empty, without '='"):
        EnvironmentSpec(name="e", environment_variables={"A=B": "1"})
    with pytest.raises(ConfigError, match="unknown key 'pip' in environment spec"):
        EnvironmentSpec.from_dict({"name": "e", "pip": []})


def test_environment_from_pip_requirements_text():
    env = EnvironmentSpec.from_pip_requirements("env", "# top\nnumpy==1.26  # pinned\n\nscikit-learn\n")
    assert env.pip_requirements == ("numpy==1.26", "scikit-learn")


# --------------------------------------------------------------------------- inferenceconfig.json

# The v1 docs example (machine-learning-service-inference-config.md) with a sourceDirectory.
V1_DOCS_INFERENCE = {
    "entryScript": "score.py",
    "sourceDirectory": "./working_dir",
    "environment": {
        "docker": {
            "arguments": [],
            "baseDockerfile": None,
            "baseImage": "mcr.microsoft.com/azureml/intelmpi2018.3-ubuntu18.04",
            "enabled": False,
            "sharedVolumes": True,
            "shmSize": None,
        },
        "environmentVariables": {"EXAMPLE_ENV_VAR": "EXAMPLE_VALUE"},
        "name": "my-deploy-env",
        "python": {
            "baseCondaEnvironment": None,
            "condaDependencies": {
                "channels": ["conda-forge"],
                "dependencies": [
                    "python=3.6.2",
                    {
                        "pip": [
                            "azureml-defaults",
                            "azureml-telemetry",
                            "scikit-learn",
                            "inference-schema[numpy-support]",
                        ]
                    },
                ],
                "name": "project_environment",
            },
            "condaDependenciesFile": None,
            "interpreterPath": "python",
            "userManagedDependencies": False,
        },
        "version": "1",
    },
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "working_dir").mkdir()
    (tmp_path / "working_dir" / "score.py").write_text("def init(): pass\ndef run(x): return x\n")
    return tmp_path


def test_v1_docs_inference_example_reads_as_is(project):
    spec = InferenceSpec.from_v1_json(V1_DOCS_INFERENCE, project)
    assert spec.source_directory == str(project / "working_dir")
    assert spec.entry_script == "score.py"
    assert spec.entry_script_path() == project / "working_dir" / "score.py"
    env = spec.environment
    assert env is not None
    assert (env.name, env.version, env.python_version) == ("my-deploy-env", "1", "3.6.2")
    assert env.pip_requirements[-1] == "inference-schema[numpy-support]"
    assert env.environment_variables == {"EXAMPLE_ENV_VAR": "EXAMPLE_VALUE"}
    assert v1_notes(V1_DOCS_INFERENCE, "inference") == []  # nothing that was set is lost
    assert InferenceSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_v1_inference_with_conda_file_and_no_source_directory(tmp_path):
    (tmp_path / "score.py").write_text("def init(): pass\n")
    (tmp_path / "myenv.yml").write_text(CONDA_YAML)
    spec = InferenceSpec.from_v1_json(
        {
            "entryScript": "score.py",
            "runtime": "python",
            "condaFile": "myenv.yml",
            "extraDockerfileSteps": "steps",
        },
        tmp_path,
    )
    assert spec.source_directory is None and spec.entry_script == str(tmp_path / "score.py")
    assert spec.environment is not None and spec.environment.name == "project_environment"
    notes = v1_notes({"extraDockerfileSteps": "steps", "enableGpu": False}, "inference")
    assert notes == ["extraDockerfileSteps: ignored (modelfleet builds no Docker image from it)"]


def test_v1_inference_user_managed_interpreter(project):
    env = dict(V1_DOCS_INFERENCE["environment"])
    env["python"] = {"userManagedDependencies": True, "interpreterPath": "/opt/py/bin/python"}
    spec = InferenceSpec.from_v1_json(
        {"entryScript": "score.py", "sourceDirectory": "working_dir", "environment": env}, project
    )
    assert spec.environment is not None and spec.environment.python_executable == "/opt/py/bin/python"
    env["python"] = {"userManagedDependencies": True, "interpreterPath": "python"}
    spec = InferenceSpec.from_v1_json(
        {"entryScript": "score.py", "sourceDirectory": "working_dir", "environment": env}, project
    )
    assert spec.environment is not None and spec.environment.python_executable is None


def test_v1_inference_errors(project):
    with pytest.raises(ConfigError, match="entryScript is required"):
        InferenceSpec.from_v1_json({"sourceDirectory": "working_dir"}, project)
    with pytest.raises(ConfigError, match="does not exist or is not a file"):
        InferenceSpec.from_v1_json({"entryScript": "missing.py", "sourceDirectory": "working_dir"}, project)
    with pytest.raises(ConfigError, match="spark-py is not supported"):
        InferenceSpec.from_v1_json({"entryScript": "score.py", "runtime": "spark-py"}, project)
    with pytest.raises(ConfigError, match="gives both environment and condaFile"):
        InferenceSpec.from_v1_json(V1_DOCS_INFERENCE | {"condaFile": "env.yml"}, project)
    with pytest.raises(
        ConfigError, match=r"unknown key 'entry_script' in inferenceconfig.json; known keys: entryScript"
    ):
        InferenceSpec.from_v1_json({"entry_script": "score.py"}, project)
    with pytest.raises(ConfigError, match="condaFile: cannot read"):
        InferenceSpec.from_v1_json({"entryScript": "score.py", "condaFile": "nope.yml"}, project)
    bad_env = V1_DOCS_INFERENCE["environment"] | {"conda": {}}
    with pytest.raises(ConfigError, match="unknown key 'conda' in environment"):
        InferenceSpec.from_v1_json({"entryScript": "score.py", "environment": bad_env}, project)


def test_inference_spec_paths():
    with pytest.raises(ConfigError, match="must be a path inside source_directory"):
        InferenceSpec("../score.py", "/srv/app")
    with pytest.raises(ConfigError, match="must be a path inside source_directory"):
        InferenceSpec("/etc/score.py", "/srv/app")
    with pytest.raises(ConfigError, match="source_directory must be an absolute path"):
        InferenceSpec("score.py", "app")
    assert InferenceSpec("score.py").entry_script_path() == Path("score.py")  # v1: the current folder
    spec = InferenceSpec.resolve("/srv/app/sub/score.py", "app", base_dir="/srv")
    assert (spec.entry_script, spec.source_directory) == ("sub/score.py", "/srv/app")


# --------------------------------------------------------------------------- import contract


def test_spec_imports_only_the_standard_library():
    # Diff against what the interpreter had already loaded (site hooks load a few third-party names).
    code = (
        "import sys; before = set(sys.modules); import modelfleet.spec; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(','.join(sorted(new - set(sys.stdlib_module_names) - {'modelfleet'})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == ""
