"""Workspace store: create/open and the model registry, on real SQLite files under tmp_path."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from modelfleet.errors import ConfigError, Conflict, NotFound
from modelfleet.store.registry import Store


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


# -- create / open ---------------------------------------------------------------------------


def test_create_lays_out_the_workspace_owner_only(tmp_path: Path) -> None:
    root = tmp_path / "new" / "fleet"  # parents are made
    with Store.create(root, "fleet") as s:
        meta = root / ".modelfleet"
        assert s.root == root.resolve() and s.name == "fleet"
        assert s.runtime_dir == meta / "runtime" and s.runtime_dir.is_dir()
        assert (meta / "blobs").is_dir()
        assert json.loads((meta / "workspace.json").read_text()) == {"name": "fleet", "format": 1}
        assert stat.S_IMODE(os.stat(meta).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(meta / "metadata.db").st_mode) == 0o600
    raw = sqlite3.connect(meta / "metadata.db")
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()


def test_create_twice_conflicts_unless_exist_ok(tmp_path: Path) -> None:
    Store.create(tmp_path, "ws").close()
    with pytest.raises(Conflict, match="already exists"):
        Store.create(tmp_path, "ws")
    with Store.create(tmp_path, "ws", exist_ok=True) as again:
        assert again.name == "ws"
    with pytest.raises(Conflict, match='named "ws"'):
        Store.create(tmp_path, "other", exist_ok=True)


def test_open_missing_workspace_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"no modelfleet workspace at .*Workspace\.create"):
        Store.open(tmp_path)


def test_open_sees_what_create_wrote(tmp_path: Path) -> None:
    (tmp_path / "m.pkl").write_bytes(b"weights")
    with Store.create(tmp_path / "ws", "ws") as s:
        s.register_model("m", tmp_path / "m.pkl", tags={"a": "1"})
    with Store.open(tmp_path / "ws") as s:
        assert s.name == "ws"
        assert s.get_model("m").tags == {"a": "1"}


@pytest.mark.parametrize("name", ["a", "has space", "-lead", "x" * 33])
def test_bad_workspace_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="workspace name"):
        Store.create(tmp_path, name)


def test_unsupported_format_is_refused(tmp_path: Path) -> None:
    Store.create(tmp_path, "ws").close()
    (tmp_path / ".modelfleet" / "workspace.json").write_text('{"name": "ws", "format": 9}')
    with pytest.raises(ConfigError, match="format 9"):
        Store.open(tmp_path)


# -- register / get --------------------------------------------------------------------------


def test_register_file_gives_versions_1_then_2(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "model.pkl"
    src.write_bytes(b"v1")
    first = store.register_model("reg", src, tags={"k": "v"}, description="first")
    src.write_bytes(b"v2")
    second = store.register_model("reg", src)
    assert (first.version, second.version) == (1, 2)
    assert first.id == "reg:1" and first.kind == "file" and first.root_name == "model.pkl"
    assert [f.relpath for f in first.files] == ["model.pkl"]
    assert store.get_model("reg").version == 2
    got = store.get_model("reg", 1)
    assert got == first
    assert store.blobs.path(got.files[0].digest).read_bytes() == b"v1"


def test_register_folder_keeps_its_name_and_tree(store: Store, tmp_path: Path) -> None:
    src = _tree(tmp_path / "outputs", {"model.pkl": b"m", "sub/vocab.txt": b"v", "sub/deep/x.bin": b"x"})
    rec = store.register_model("folder", src)
    assert rec.kind == "folder" and rec.root_name == "outputs"
    assert [f.relpath for f in rec.files] == [
        "outputs/model.pkl",
        "outputs/sub/deep/x.bin",
        "outputs/sub/vocab.txt",
    ]
    assert {f.relpath: f.size for f in rec.files}["outputs/model.pkl"] == 1
    assert store.register_model("folder", src).version == 2


def test_registered_versions_do_not_change_when_the_source_does(store: Store, tmp_path: Path) -> None:
    src = _tree(tmp_path / "outputs", {"model.pkl": b"original"})
    rec = store.register_model("imm", src)
    (src / "model.pkl").write_bytes(b"changed")
    (src / "new.txt").write_bytes(b"new")
    out = store.download_model("imm", 1, tmp_path / "dl")
    assert (out / "model.pkl").read_bytes() == b"original"
    assert not (out / "new.txt").exists()
    assert store.get_model("imm", 1).files == rec.files
    # The stored blob cannot be written through by accident.
    blob = store.blobs.path(rec.files[0].digest)
    assert stat.S_IMODE(os.stat(blob).st_mode) == 0o444


def test_register_follows_symlinks_inside_the_model_folder(store: Store, tmp_path: Path) -> None:
    folder = _tree(tmp_path / "snap", {"blobs/b1": b"weights", "real/cfg.json": b"{}"})
    (folder / "model.bin").symlink_to("blobs/b1")
    (folder / "abs.bin").symlink_to(folder / "blobs" / "b1")  # absolute, but inside
    (folder / "alias").symlink_to("real", target_is_directory=True)
    rec = store.register_model("linked", folder)
    stored = {f.relpath: store.blobs.path(f.digest).read_bytes() for f in rec.files}
    assert stored["snap/model.bin"] == stored["snap/abs.bin"] == b"weights"
    assert stored["snap/alias/cfg.json"] == b"{}"


@pytest.mark.parametrize("how", ["absolute", "dotdot", "folder", "nested"])
def test_register_refuses_symlinks_out_of_the_model_folder(store: Store, tmp_path: Path, how: str) -> None:
    # Model caches are often links into a blob cache elsewhere; following them could equally
    # publish ~/.ssh or a workspace's keys. Refused with the link's name, nothing registered.
    secret = _tree(tmp_path / "elsewhere", {"id_rsa": b"PRIVATE"})
    folder = _tree(tmp_path / "model", {"weights.bin": b"w", "sub/x.bin": b"x"})
    link = {
        "absolute": folder / "key",
        "dotdot": folder / "key",
        "folder": folder / "keys",
        "nested": folder / "sub" / "key",
    }[how]
    target = {
        "absolute": secret / "id_rsa",
        "dotdot": Path("..") / "elsewhere" / "id_rsa",
        "folder": secret,
        "nested": Path("..") / ".." / "elsewhere" / "id_rsa",
    }[how]
    link.symlink_to(target)
    with pytest.raises(ConfigError) as info:
        store.register_model("m", folder)
    message = str(info.value)
    assert str(link) in message and "outside the model folder" in message and "cp -rL" in message
    assert store.list_models() == []
    assert not any(b"PRIVATE" in p.read_bytes() for p in store.blobs.root.rglob("*") if p.is_file())


def test_register_leaves_out_a_workspace_metadata_folder(store: Store, tmp_path: Path) -> None:
    folder = _tree(tmp_path / "m", {"model.pkl": b"m", ".modelfleet/metadata.db": b"keys", "sub/.modelfleet/x": b"k"})
    rec = store.register_model("m", folder)
    assert [f.relpath for f in rec.files] == ["m/model.pkl"]


def test_register_model_paths_with_dotdot_and_absolute(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tree(tmp_path / "outputs", {"inner/model.pkl": b"m"})
    via_dotdot = store.register_model("a", tmp_path / "outputs" / "inner" / ".." / "inner")
    assert via_dotdot.root_name == "inner" and via_dotdot.files[0].relpath == "inner/model.pkl"
    monkeypatch.chdir(tmp_path / "outputs" / "inner")
    for relative in ("..", "../inner/..", "."):
        rec = store.register_model("b", Path(relative))
        assert ".." not in rec.root_name and rec.root_name in ("outputs", "inner"), rec
        assert all(not f.relpath.startswith(("/", "..")) for f in rec.files)
    store.materialize_model(store.get_model("b", 1), tmp_path / "app")  # lays out below dest, nowhere else
    assert (tmp_path / "app" / "outputs" / "inner" / "model.pkl").read_bytes() == b"m"
    absolute = store.register_model("c", (tmp_path / "outputs" / "inner" / "model.pkl").resolve())
    assert absolute.root_name == "model.pkl"


def test_register_refuses_missing_path_empty_folder_and_bad_names(store: Store, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        store.register_model("m", tmp_path / "nope.pkl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty folder"):
        store.register_model("m", tmp_path / "empty")
    (tmp_path / "f").write_bytes(b"x")
    for bad in ["", "../up", "a/b", ".hidden", "x" * 256]:
        with pytest.raises(ConfigError, match="model_name"):
            store.register_model(bad, tmp_path / "f")


def test_get_model_not_found_names_the_versions(store: Store, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    store.register_model("m", tmp_path / "f")
    with pytest.raises(NotFound, match='model "nope" not found in workspace "ws"'):
        store.get_model("nope")
    with pytest.raises(NotFound, match="no version 7.*versions 1 to 1"):
        store.get_model("m", 7)


# -- tags and properties ------------------------------------------------------------------


def test_tags_are_mutable(store: Store, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    store.register_model("m", tmp_path / "f", tags={"a": "1", "b": "2"})
    rec = store.add_model_tags("m", 1, {"b": "20", "c": "3"})
    assert rec.tags == {"a": "1", "b": "20", "c": "3"}
    rec = store.remove_model_tags("m", 1, ["a", "not-there"])
    assert rec.tags == {"b": "20", "c": "3"}
    assert store.get_model("m", 1).tags == {"b": "20", "c": "3"}


def test_properties_are_added_but_never_changed(store: Store, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    store.register_model("m", tmp_path / "f", properties={"accuracy": "0.9"})
    rec = store.add_model_properties("m", 1, {"auc": "0.8", "accuracy": "0.9"})  # same value: fine
    assert rec.properties == {"accuracy": "0.9", "auc": "0.8"}
    with pytest.raises(Conflict, match='property "accuracy".*never change'):
        store.add_model_properties("m", 1, {"accuracy": "0.95"})
    assert store.get_model("m", 1).properties == {"accuracy": "0.9", "auc": "0.8"}


def test_tag_values_must_be_strings_or_scalars(store: Store, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    rec = store.register_model("m", tmp_path / "f", tags={"n": 3, "ok": True})  # type: ignore[dict-item]
    assert rec.tags == {"n": "3", "ok": "True"}
    with pytest.raises(ConfigError, match=r"tags\['bad'\] must be a string"):
        store.add_model_tags("m", 1, {"bad": [1]})  # type: ignore[dict-item]


# -- list --------------------------------------------------------------------------------


def test_list_filters_as_v1(store: Store, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    store.register_model("a", tmp_path / "f", tags={"stage": "dev", "team": "x"})  # a:1
    store.register_model("a", tmp_path / "f", tags={"stage": "prod"}, properties={"p": "1"})  # a:2
    store.register_model("b", tmp_path / "f", tags={"team": "y"})  # b:1

    def ids(records: list) -> list[str]:
        return [r.id for r in records]

    assert ids(store.list_models()) == ["a:2", "a:1", "b:1"]
    assert ids(store.list_models(name="a")) == ["a:2", "a:1"]
    assert ids(store.list_models(tags=["team"])) == ["a:1", "b:1"]
    assert ids(store.list_models(tags=[["stage", "prod"]])) == ["a:2"]
    assert ids(store.list_models(tags=["team", ["stage", "dev"]])) == ["a:1"]
    assert ids(store.list_models(properties=["p"])) == ["a:2"]
    assert ids(store.list_models(properties=[("p", "2")])) == []
    assert ids(store.list_models(latest=True)) == ["a:2", "b:1"]
    # latest picks the newest version first; the filter then applies to it
    assert ids(store.list_models(latest=True, tags=["team"])) == ["b:1"]
    assert store.list_models(name="none") == []
    with pytest.raises(ConfigError, match=r'"key" or \["key", "value"\]'):
        store.list_models(tags=[["a", "b", "c"]])


# -- download / materialize ------------------------------------------------------------------


def test_download_file_and_folder(store: Store, tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(b"file")
    store.register_model("file", tmp_path / "model.pkl")
    store.register_model("folder", _tree(tmp_path / "outputs", {"a.bin": b"a", "sub/b.bin": b"b"}))
    target = tmp_path / "dl"
    path = store.download_model("file", None, target)
    assert path == target / "model.pkl" and path.read_bytes() == b"file"
    path.write_bytes(b"the user's copy is writable")
    path = store.download_model("folder", 1, target)
    assert path == target / "outputs"
    assert (path / "a.bin").read_bytes() == b"a" and (path / "sub" / "b.bin").read_bytes() == b"b"


def test_download_refuses_to_overwrite_unless_exist_ok(store: Store, tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(b"stored")
    store.register_model("file", tmp_path / "model.pkl")
    target = tmp_path / "dl"
    target.mkdir()
    (target / "model.pkl").write_bytes(b"mine")
    with pytest.raises(Conflict, match="exist_ok=True"):
        store.download_model("file", 1, target)
    assert (target / "model.pkl").read_bytes() == b"mine"
    store.download_model("file", 1, target, exist_ok=True)
    assert (target / "model.pkl").read_bytes() == b"stored"


def test_materialize_lays_out_as_v1_with_copies_a_write_cannot_reach_the_blob(store: Store, tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(b"file")
    file_rec = store.register_model("file", tmp_path / "model.pkl")
    folder_rec = store.register_model("folder", _tree(tmp_path / "outputs", {"a.bin": b"a", "s/b.bin": b"b"}))
    dest_file = tmp_path / "azureml-models" / "file" / "1"
    dest_folder = tmp_path / "azureml-models" / "folder" / "1"
    store.materialize_model(file_rec, dest_file)
    store.materialize_model(folder_rec, dest_folder)
    assert sorted(p.name for p in dest_file.iterdir()) == ["model.pkl"]
    assert (dest_file / "model.pkl").read_bytes() == b"file"
    assert (dest_folder / "outputs" / "a.bin").read_bytes() == b"a"
    assert (dest_folder / "outputs" / "s" / "b.bin").read_bytes() == b"b"
    blob = store.blobs.path(file_rec.files[0].digest)
    laid_out = dest_file / "model.pkl"
    assert os.stat(laid_out).st_ino != os.stat(blob).st_ino  # its own file, not a hard link
    assert stat.S_IMODE(os.stat(laid_out).st_mode) == 0o444
    # A replica that chmods its model file and writes to it (root needs no chmod) changes its copy only.
    os.chmod(laid_out, 0o644)
    with open(laid_out, "r+b") as f:
        f.write(b"EVIL")
    assert blob.read_bytes() == b"file"
    assert stat.S_IMODE(os.stat(blob).st_mode) == 0o444
    other = tmp_path / "other" / "file" / "1"
    store.materialize_model(file_rec, other)  # another service with the same model
    assert (other / "model.pkl").read_bytes() == b"file"
    # Doing it again (a replica restarted into the same folder) is fine.
    store.materialize_model(file_rec, dest_file)
    assert (dest_file / "model.pkl").read_bytes() == b"file"
