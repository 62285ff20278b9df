"""The deploy settings table (``spec/deploy.py``) and what is derived from it: validation,
the v1 JSON names, ``deploy_configuration()``'s keywords and the CLI's flags."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest

from modelfleet import AksWebservice
from modelfleet.cli import build_parser
from modelfleet.cli import main as cli_main
from modelfleet.errors import ConfigError
from modelfleet.spec import DeploySpec, aks_deploy_configuration
from modelfleet.spec.deploy import SETTINGS
from modelfleet.spec.fields import Setting, json_get

# v1 azureml-core ``AksWebservice.deploy_configuration``, its parameters in its order.
V1_PARAMETERS = [
    "autoscale_enabled",
    "autoscale_min_replicas",
    "autoscale_max_replicas",
    "autoscale_refresh_seconds",
    "autoscale_target_utilization",
    "collect_model_data",
    "auth_enabled",
    "cpu_cores",
    "memory_gb",
    "enable_app_insights",
    "scoring_timeout_ms",
    "replica_max_concurrent_requests",
    "max_request_wait_time",
    "num_replicas",
    "primary_key",
    "secondary_key",
    "tags",
    "properties",
    "description",
    "gpu_cores",
    "period_seconds",
    "initial_delay_seconds",
    "timeout_seconds",
    "success_threshold",
    "failure_threshold",
    "namespace",
    "token_auth_enabled",
    "compute_target_name",
    "cpu_cores_limit",
    "memory_gb_limit",
    "blobfuse_enabled",
]
# modelfleet's additions: keyword-only, with names of their own.
ADDITIONS = [
    "autoscale_down_delay_seconds",
    "max_body_bytes",
    "model_cache_size",
    "model_cache_memory_gb",
    "max_batch_size",
    "max_batch_delay_ms",
    "scale_to_zero_after_seconds",
    "cold_start_wait_ms",
    "compute_type",
]


@pytest.mark.parametrize(
    "function", [aks_deploy_configuration, AksWebservice.deploy_configuration], ids=["spec", "AksWebservice"]
)
def test_deploy_configuration_has_v1s_explicit_keywords(function: Any) -> None:
    params = list(inspect.signature(function).parameters.values())
    kinds = {p.kind for p in params}
    assert inspect.Parameter.VAR_KEYWORD not in kinds and inspect.Parameter.VAR_POSITIONAL not in kinds
    positional = [p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert positional == V1_PARAMETERS
    assert all(p.default is None for p in params if p.name in V1_PARAMETERS)
    assert [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY] == ADDITIONS


def test_the_table_and_the_keywords_name_the_same_settings() -> None:
    keywords = set(inspect.signature(aks_deploy_configuration).parameters) - {"compute_type"}
    assert sorted(s.flat for s in SETTINGS) == sorted(keywords)
    assert len({s.flag for s in SETTINGS}) == len(SETTINGS)
    assert len({path for s in SETTINGS for path in s.v1}) == sum(len(s.v1) for s in SETTINGS)


def _other_value(s: Setting) -> Any:
    """A valid value other than the default, from the setting's kind and bounds."""
    if s.kind == "bool":
        return not s.default
    if s.kind == "int":
        return (s.default if s.default is not None else s.lo or 0) + 1 if s.hi is None else s.hi
    if s.kind == "number":
        return 7.0
    if s.kind == "map":
        return {"k": "v"}
    return "ns-1"


def _spec_with(s: Setting, value: Any) -> DeploySpec:
    extra: dict[str, Any] = {}
    if s.flat == "num_replicas":
        extra["autoscale_enabled"] = False
    if s.flat == "token_auth_enabled":
        extra["auth_enabled"] = False
    if s.flat == "autoscale_min_replicas":
        extra["autoscale_max_replicas"] = 10
    return aks_deploy_configuration(**{s.flat: value, **extra})


@pytest.mark.parametrize("s", [s for s in SETTINGS if s.flat != "autoscale_enabled"], ids=lambda s: s.flat)
def test_every_setting_reaches_its_v1_json_key_and_back(s: Setting) -> None:
    value = _other_value(s)
    spec = _spec_with(s, value)
    assert spec.value(s) == value
    if s.group is not None:
        assert getattr(spec, s.flat) == value  # v1's flat attribute of a nested value
    out = spec.to_v1_json(include_keys=True)
    assert json_get(out, s.v1[0]) == value
    assert DeploySpec.from_v1_json(json.loads(json.dumps(out))) == spec
    assert DeploySpec.from_dict(json.loads(json.dumps(spec.to_dict(include_keys=True)))) == spec


_WRONG = {"bool": ("yes", "must be true or false"), "int": ("1", "must be an integer"), "number": ("1", "must be a")}
_WRONG |= {"text": (5, "must be a non-empty string"), "map": (["a"], "must be a dict")}


@pytest.mark.parametrize("s", SETTINGS, ids=lambda s: s.flat)
def test_every_setting_refuses_a_wrong_value_naming_itself_and_the_allowed_values(s: Setting) -> None:
    value, expected = _WRONG[s.kind]
    with pytest.raises(ConfigError) as err:
        aks_deploy_configuration(**{s.flat: value})
    assert err.value.message.startswith(f"{s.flat} {expected}"), err.value.message
    if s.kind == "int":
        with pytest.raises(ConfigError) as err:
            aks_deploy_configuration(**{s.flat: (s.lo or 0) - 1})
        allowed = f"between {s.lo} and {s.hi}" if s.hi is not None else f"at least {s.lo}"
        assert f"{s.flat} must be {allowed}" in err.value.message


def test_a_v1_json_error_names_the_json_key_of_every_setting() -> None:
    for s in SETTINGS:
        value, _ = _WRONG[s.kind]
        d: dict[str, Any] = {"computeType": "aks"}
        top, _, key = s.v1[-1].partition(".")
        if key:
            d[top] = {key: value}
        else:
            d[top] = value
        with pytest.raises(ConfigError) as err:
            DeploySpec.from_v1_json(d)
        assert err.value.message.startswith(f"{s.v1[-1]} in deploymentconfig.json: {s.flat} "), err.value.message


@pytest.mark.parametrize("command", [["model", "deploy"], ["service", "update"]])
def test_the_cli_has_one_flag_per_setting_with_its_help(command: list[str]) -> None:
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command[0]]  # type: ignore[union-attr]
    leaf = sub._subparsers._group_actions[0].choices[command[1]]
    flags = {opt: action for action in leaf._actions for opt in action.option_strings}
    for s in SETTINGS:
        if s.secret and command == ["service", "update"]:
            assert s.flag not in flags  # a service's keys change with regen-key, not update
            continue
        assert s.flag in flags, s.flag
        assert flags[s.flag].help and flags[s.flag].help.startswith(s.help)


def test_cli_flags_build_the_same_spec_as_the_keywords(tmp_path: Path) -> None:
    from modelfleet.cli.common import deploy_settings

    argv = ["model", "deploy", "-n", "svc", "-m", "m:1", "--ic", "ic.json"]
    argv += ["--cpu-cores", "1.5", "--num-replicas", "2", "--autoscale-enabled", "false", "--tag", "team=risk"]
    argv += ["--tag", "stage=dev", "--period-seconds", "5", "--token-auth-enabled", "TRUE", "--auth-enabled", "false"]
    args = build_parser().parse_args(argv)
    given = deploy_settings(args)
    assert given == {
        "cpu_cores": 1.5,
        "num_replicas": 2,
        "autoscale_enabled": False,
        "auth_enabled": False,
        "token_auth_enabled": True,
        "period_seconds": 5,
        "tags": {"team": "risk", "stage": "dev"},
    }
    spec = aks_deploy_configuration(**given)
    assert (spec.cpu_cores, spec.num_replicas, spec.liveness.period_seconds) == (1.5, 2, 5)
    assert build_parser().parse_args(argv[:8]).setting_cpu_cores is None  # no flag: not given


def test_cli_refuses_a_bad_flag_value_naming_the_field_before_anything_is_looked_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["-w", str(tmp_path / "none"), "model", "deploy", "-n", "svc", "-m", "m:1", "--ic", "ic.json"]
    assert cli_main([*base, "--autoscale-target-utilization", "150"]) == 1
    assert "--autoscale-target-utilization must be between 1 and 100 (got 150)" in capsys.readouterr().err
    assert cli_main([*base, "--auth-enabled", "maybe"]) == 2  # a usage error: one line, exit 2
    assert "argument --auth-enabled: must be true or false (got 'maybe')" in capsys.readouterr().err


def test_cli_flags_override_the_deploy_config_file(tmp_path: Path) -> None:
    from modelfleet.cli.common import deploy_config_from_args

    dc = tmp_path / "dc.json"
    dc.write_text(json.dumps({"computeType": "aks", "containerResourceRequirements": {"cpu": 0.5, "memoryInGB": 1}}))
    argv = ["model", "deploy", "-n", "svc", "-m", "m:1", "--ic", "ic.json", "--dc", str(dc)]
    assert deploy_config_from_args(build_parser().parse_args(argv)).cpu_cores == 0.5
    spec = deploy_config_from_args(build_parser().parse_args([*argv, "--cpu-cores", "2", "--num-replicas", "3"]))
    assert (spec.cpu_cores, spec.memory_gb, spec.num_replicas, spec.autoscale.enabled) == (2.0, 1.0, 3, False)
    assert deploy_config_from_args(build_parser().parse_args(argv[:8])) is None  # v1's defaults, later
