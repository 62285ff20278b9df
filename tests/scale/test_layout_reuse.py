"""Issue 16: a redeploy that keeps most models reuses their layout (``control/layout.py``).

A real workspace store (SQLite, blob store) and real app folders on disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from modelfleet.control.layout import generation_dir, prepare_app, remove_generation
from modelfleet.errors import ConfigError
from modelfleet.spec import aks_deploy_configuration
from modelfleet.store.registry import Store


def _config(store: Store, tmp_path: Path, models: list[str]) -> dict[str, Any]:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "score.py").write_text("def init():\n    pass\n\n\ndef run(data):\n    return data\n")
    inference = {"entry_script": "score.py", "source_name": "src", "snapshot": store.put_snapshot(src)}
    refs = [{"name": m, "version": 1} for m in models]
    return {"deploy": aks_deploy_configuration().to_dict(), "inference": inference, "models": refs}


def _register(store: Store, tmp_path: Path, names: str) -> None:
    for name in names:
        weights = tmp_path / f"{name}.bin"
        weights.write_bytes(name.encode() * 100)
        store.register_model(name, weights)


def _file(store: Store, generation: int, name: str) -> Path:
    return generation_dir(store.runtime_dir, "svc", generation) / "app" / "azureml-models" / name / "1" / f"{name}.bin"


def test_a_redeploy_links_the_models_it_keeps_and_lays_out_only_new_ones(store: Store, tmp_path: Path) -> None:
    _register(store, tmp_path, "abc")
    prepare_app(store, "svc", 1, _config(store, tmp_path, ["a", "b"]))
    prepare_app(store, "svc", 2, _config(store, tmp_path, ["a", "b", "c"]))
    for name in "ab":
        assert os.path.samefile(_file(store, 1, name), _file(store, 2, name))  # the same copy, linked
    assert _file(store, 2, "c").read_bytes() == b"c" * 100
    blob = store.blobs.path(store.get_model("a", 1).files[0].digest)
    assert not os.path.samefile(blob, _file(store, 2, "a"))  # a copy, never the blob itself
    assert oct(_file(store, 2, "a").stat().st_mode & 0o777) == "0o444"

    prepare_app(store, "svc", 3, _config(store, tmp_path, ["c"]))
    remove_generation(store.runtime_dir, "svc", 1)
    remove_generation(store.runtime_dir, "svc", 2)
    shared = store.runtime_dir / "services" / "svc" / "models"
    assert sorted(p.name for p in shared.iterdir() if not p.name.startswith(".")) == ["c"]  # a and b went
    assert _file(store, 3, "c").read_bytes() == b"c" * 100


def test_a_copy_a_replica_wrote_to_is_not_reused(store: Store, tmp_path: Path) -> None:
    _register(store, tmp_path, "a")
    prepare_app(store, "svc", 1, _config(store, tmp_path, ["a"]))
    written = _file(store, 1, "a")
    written.chmod(0o644)  # what a careless score.py can do to its own copy
    written.write_bytes(b"tampered")
    prepare_app(store, "svc", 2, _config(store, tmp_path, ["a"]))
    assert _file(store, 2, "a").read_bytes() == b"a" * 100
    assert not os.path.samefile(written, _file(store, 2, "a"))


def test_the_layout_refuses_more_than_1000_models(store: Store, tmp_path: Path) -> None:
    config = _config(store, tmp_path, [f"m{i}" for i in range(1001)])
    with pytest.raises(ConfigError, match="at most 1,000 models"):
        prepare_app(store, "svc", 1, config)
