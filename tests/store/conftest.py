"""Object-store servers for the shared blob store tests: one of each per session, a fresh container per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from object_servers import BlobBackend, Server, running_azurite, running_moto_s3


@pytest.fixture(scope="session")
def azurite() -> Iterator[Server]:
    with running_azurite() as server:
        yield server


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[Server]:
    with running_moto_s3() as server:
        yield server


@pytest.fixture(params=["azurite", "s3-moto", "file"])
def blob_backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BlobBackend:
    import fsspec

    name = f"t{uuid.uuid4().hex[:12]}"
    if request.param == "file":
        return BlobBackend("file", f"file://{tmp_path}/objects/team", {})
    server: Server = request.getfixturevalue("azurite" if request.param == "azurite" else "moto_s3")
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    scheme = "az" if request.param == "azurite" else "s3"
    fsspec.filesystem(scheme, skip_instance_cache=True).mkdir(name)
    return BlobBackend(request.param, f"{scheme}://{name}/team", dict(server.env))
