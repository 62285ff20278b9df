"""``Model.profile``: a temporary service scored with the samples, its replica measured."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e_support import SCRIPTS, stop_cluster
from modelfleet import Environment, InferenceConfig, Model, Webservice, Workspace
from modelfleet.errors import ConfigError


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    workspace = Workspace.create("prof", tmp_path / "ws")
    yield workspace
    stop_cluster(workspace)


def test_profile_measures_the_replica_and_recommends_from_what_it_used(ws: Workspace, tmp_path: Path) -> None:
    samples = tmp_path / "samples.jsonl"
    samples.write_text("\n".join(json.dumps({"mb": 100}) for _ in range(3)) + "\n")  # holds 300 MB in the end
    ic = InferenceConfig(entry_script="score.py", source_directory=SCRIPTS / "hog_memory", environment=Environment("e"))
    profile = Model.profile(ws, "hog", [], ic, input_dataset=samples, cpu=0.5, memory_in_gb=1)
    profile.wait_for_completion(show_output=True)
    details = profile.get_details()
    assert details["state"] == "Succeeded" and details["successQueries"] == details["totalQueries"] == 3
    assert (details["requestedCpu"], details["requestedMemoryInGB"]) == (0.5, 1)
    assert details["maxUtilizedMemoryInGB"] >= 0.3  # the 300 MB the samples made it hold
    assert details["recommendedMemoryInGB"] >= details["maxUtilizedMemoryInGB"] * 1.2 - 0.001
    assert details["recommendedCpu"] >= 0.1 and details["maxUtilizedCpu"] > 0
    assert details["latencyPercentile50InMs"] > 0
    assert Webservice.list(ws) == []  # the temporary service is gone


def test_profile_input_must_be_json_lines_or_a_list(ws: Workspace, tmp_path: Path) -> None:
    ic = InferenceConfig(entry_script="score.py", source_directory=SCRIPTS / "sum", environment=Environment("e"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"data": [[1]]}\nnot json\n')
    with pytest.raises(ConfigError, match="line 2 is not JSON"):
        Model.profile(ws, "p", [], ic, input_dataset=bad)
    with pytest.raises(ConfigError, match="no request bodies"):
        Model.profile(ws, "p", [], ic, input_dataset=[])
    with pytest.raises(ConfigError, match="no v1 Dataset"):
        Model.profile(ws, "p", [], ic, input_dataset=42)
    assert ws.cluster().info() is None  # refused before anything was deployed
