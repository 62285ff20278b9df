"""End to end on a shared workspace: metadata in a real PostgreSQL server, models in Azurite.

Alice registers a model from her machine's folder; Bob, in another folder with an empty read
cache and the team's key, deploys it to his local cluster (real daemon, router and replica
processes), which fetches it from Azurite and checks its hash; a token Alice's SDK issues is
accepted by Bob's cluster, because the signing key is the team's, in the shared database.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import fsspec
import httpx
import pytest
from object_servers import Server

from e2e_support import SCRIPTS, SUM_BODY, stop_cluster
from modelfleet import AksWebservice, Environment, InferenceConfig, Model, Webservice, Workspace
from modelfleet.store.blobs import BlobStore

pytestmark = pytest.mark.filterwarnings("ignore:Sending a large body directly with raw bytes")


def test_a_model_registered_by_one_member_is_deployed_from_azurite_by_another_and_tokens_cross(
    tmp_path: Path, postgres_server: Any, azurite: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in azurite.env.items():
        monkeypatch.setenv(key, value)  # the daemon Bob starts inherits them, as from his shell
    container = f"t{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("az", skip_instance_cache=True).mkdir(container)
    backends = {"database": postgres_server.new_database(), "blob_store": f"az://{container}/team"}

    alice = Workspace.create("team", tmp_path / "alice", **backends)
    (tmp_path / "weights.json").write_text(json.dumps({"weight": 7}))
    model = Model.register(alice, model_path=tmp_path / "weights.json", model_name="weights")
    digest = alice.store.get_model("weights").files[0].digest

    (tmp_path / "bob" / ".modelfleet").mkdir(parents=True)
    shutil.copy(tmp_path / "alice" / ".modelfleet" / "secret.key", tmp_path / "bob" / ".modelfleet")
    bob = Workspace.create("team", tmp_path / "bob", **backends)
    assert not BlobStore(tmp_path / "bob" / ".modelfleet" / "blobs").has(digest)
    try:
        ic = InferenceConfig(
            entry_script="score.py", source_directory=SCRIPTS / "read_model", environment=Environment("e2e")
        )
        dc = AksWebservice.deploy_configuration(num_replicas=1, token_auth_enabled=True)
        service = Model.deploy(bob, "reader", [Model(bob, "weights", version=model.version)], ic, dc)
        service.wait_for_deployment(timeout_sec=90)
        assert service.state == "Healthy"
        assert BlobStore(tmp_path / "bob" / ".modelfleet" / "blobs").has(digest)  # fetched from Azurite

        token, _ = Webservice(alice, "reader").get_token()  # issued on Alice's side
        answer = httpx.post(
            service.scoring_uri,
            content=SUM_BODY,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"model": {"weight": 7}}
        assert httpx.post(service.scoring_uri, content=SUM_BODY, timeout=30).status_code == 401
    finally:
        stop_cluster(bob)
        alice.store.close()
        bob.store.close()
