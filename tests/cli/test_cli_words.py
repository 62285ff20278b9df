"""The SDK's messages in the CLI's words (cli/words.py): keywords become the flags a CLI user
types. Pure: the same function the CLI applies to every error it prints."""

from __future__ import annotations

from modelfleet.cli.words import in_cli_words


def test_deploy_settings_become_their_flags() -> None:
    said = in_cli_words("cpu_cores must be above 0 (got -1); autoscale_enabled=True needs no num_replicas")
    assert said == "--cpu-cores must be above 0 (got -1); --autoscale-enabled true needs no --num-replicas"


def test_rollout_fields_become_the_rollout_commands_flags() -> None:
    assert in_cli_words("rollout.steps must be strictly increasing (got ['50', '10'])") == (
        "--steps must be strictly increasing (got ['50', '10'])"
    )
    assert in_cli_words("rollout.interval_s must be above 0 and at most 86400 (got 0)").startswith("--interval-s ")
    assert in_cli_words("rollout.max_error_rate must be from 0 to 1 (got 2)").startswith("--max-error-rate ")
    assert in_cli_words("rollout.max_p99_ms must be above 0 (got -1)").startswith("--max-p99-ms ")


def test_endpoint_version_keywords_become_flags() -> None:
    said = in_cli_words("mirror_percentile must be from 0 to 100; a mirror takes no traffic_percentile")
    assert said == "--mirror-percentile must be from 0 to 100; a mirror takes no --traffic-percentile"


def test_words_inside_other_names_are_left_alone() -> None:
    # a keyword that is part of a longer name or a call is not a flag
    assert in_cli_words("see spec.cpu_cores_limit and cpu_cores(") == "see spec.cpu_cores_limit and cpu_cores("
