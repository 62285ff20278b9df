"""Source snapshots: determinism, ignore files with git's rules, symlinks, safe extraction."""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from pathlib import Path

import pytest

from modelfleet.errors import ConfigError, NotFound
from modelfleet.store.registry import Store
from modelfleet.store.snapshot import MAX_SNAPSHOT_BYTES, extract_snapshot, make_snapshot


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def _digest(source: Path, tmp_path: Path) -> str:
    out = tmp_path / f"snap-{os.urandom(4).hex()}.zip"
    make_snapshot(source, out)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def _names(source: Path, tmp_path: Path) -> list[str]:
    out = tmp_path / f"snap-{os.urandom(4).hex()}.zip"
    make_snapshot(source, out)
    with zipfile.ZipFile(out) as zf:
        return [n for n in zf.namelist() if not n.endswith("/")]


# -- determinism -----------------------------------------------------------------------------


def test_same_tree_gives_same_digest_whenever_and_wherever(tmp_path: Path) -> None:
    files = {"score.py": "def run(d): return d\n", "lib/util.py": "X = 1\n", "run.sh": "#!/bin/sh\n"}
    a = _tree(tmp_path / "a", files)
    b = _tree(tmp_path / "b", dict(reversed(files.items())))  # created in another order
    os.utime(b / "score.py", (1_000_000, 1_000_000))  # other timestamps
    os.chmod(a / "lib" / "util.py", 0o600)  # permissions other than the executable bit
    os.chmod(a / "run.sh", 0o755)
    os.chmod(b / "run.sh", 0o700)
    assert _digest(a, tmp_path) == _digest(b, tmp_path)
    (b / "lib" / "util.py").write_text("X = 2\n")
    assert _digest(a, tmp_path) != _digest(b, tmp_path)


def test_executable_bit_is_kept_and_entries_are_sorted(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {"z.py": "", "a/b.sh": "#!/bin/sh\n", "a-c.txt": ""})
    os.chmod(src / "a" / "b.sh", 0o700)
    out = tmp_path / "snap.zip"
    make_snapshot(src, out)
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == sorted(zf.namelist()) == ["a-c.txt", "a/", "a/b.sh", "z.py"]
        modes = {i.filename: (i.external_attr >> 16) & 0o777 for i in zf.infolist()}
        assert modes == {"a-c.txt": 0o644, "a/": 0o755, "a/b.sh": 0o755, "z.py": 0o644}
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    dest = tmp_path / "dest"
    extract_snapshot(out, dest)
    assert stat.S_IMODE(os.stat(dest / "a" / "b.sh").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(dest / "z.py").st_mode) == 0o644


# -- ignore files ----------------------------------------------------------------------------


def test_amlignore_beats_gitignore(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {"score.py": "", "data.csv": "", "notes.md": ""})
    (src / ".gitignore").write_text("notes.md\n")
    assert _names(src, tmp_path) == [".gitignore", "data.csv", "score.py"]
    (src / ".amlignore").write_text("*.csv\n")
    assert _names(src, tmp_path) == [".amlignore", ".gitignore", "notes.md", "score.py"]


def test_negation_and_directory_patterns(tmp_path: Path) -> None:
    src = _tree(
        tmp_path / "src",
        {
            "score.py": "",
            "a.log": "",
            "keep.log": "",
            "build/out.bin": "",  # "build/" matches this folder ...
            "sub/build": "",  # ... but not a file named build
            "cache/x.tmp": "",
            "cache/keep.me": "",  # re-included: only cache's contents were excluded
            "venv/lib/keep.me": "",  # not re-included: its folder is excluded, as in git
            "/root.txt".lstrip("/"): "",
            "sub/root.txt": "",  # "/root.txt" is anchored to the top
        },
    )
    (src / ".amlignore").write_text(
        "# comment\n*.log\n!keep.log\nbuild/\ncache/*\n!cache/keep.me\nvenv/\n!keep.me\n/root.txt\n"
    )
    assert _names(src, tmp_path) == [
        ".amlignore",
        "cache/keep.me",
        "keep.log",
        "score.py",
        "sub/build",
        "sub/root.txt",
    ]


def test_nested_ignore_files_apply_below_their_folder_and_win(tmp_path: Path) -> None:
    src = _tree(
        tmp_path / "src",
        {"top.tmp": "", "pkg/a.tmp": "", "pkg/data/b.bin": "", "pkg/keep.bin": "", "other/data/c.bin": ""},
    )
    (src / ".gitignore").write_text("*.tmp\n*.bin\n")
    # Deeper file: re-includes .bin below pkg, and anchors "data/" to pkg/.
    (src / "pkg" / ".gitignore").write_text("!*.bin\n/data/\n")
    assert _names(src, tmp_path) == [".gitignore", "pkg/.gitignore", "pkg/keep.bin"]


def test_git_and_workspace_metadata_are_always_left_out(tmp_path: Path) -> None:
    files = {"score.py": "", ".git/HEAD": "ref", "sub/.git/config": "", ".gitmodules": ""}
    src = _tree(tmp_path / "src", files)
    with Store.create(src, "ws"):  # a workspace inside the source folder holds service keys
        pass
    assert _names(src, tmp_path) == [".gitmodules", "score.py"]


# -- symlinks --------------------------------------------------------------------------------


def test_symlink_outside_is_refused_with_the_fix(tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("outside")
    src = _tree(tmp_path / "src", {"score.py": ""})
    (src / "link.txt").symlink_to(secret)
    with pytest.raises(ConfigError) as info:
        make_snapshot(src, tmp_path / "s.zip")
    message = str(info.value)
    assert "link.txt" in message and str(secret) in message
    assert "copy the file into the folder or add the link to .amlignore" in message
    (src / ".amlignore").write_text("link.txt\n")
    assert _names(src, tmp_path) == [".amlignore", "score.py"]


@pytest.mark.parametrize("target", ["../elsewhere/secret.txt", "/etc/passwd"])
def test_relative_and_absolute_symlinks_outside_are_refused(tmp_path: Path, target: str) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "secret.txt").write_text("outside")
    src = _tree(tmp_path / "src", {"score.py": ""})
    (src / "sub").mkdir()
    (src / "sub" / "link").symlink_to(("../" + target) if not target.startswith("/") else target)
    with pytest.raises(ConfigError, match="sub/link.*points outside"):
        make_snapshot(src, tmp_path / "s.zip")


@pytest.mark.parametrize("link", ["key.pem", "meta", "deep/k"])
def test_symlink_into_workspace_metadata_is_refused(tmp_path: Path, link: str) -> None:
    # The source folder is the workspace's root (a common layout): a link into .modelfleet used to
    # ship the token-signing key inside the snapshot, that is to every replica.
    src = _tree(tmp_path / "ws", {"score.py": "", "deep/x.py": ""})
    with Store.create(src, "ws"):
        pass
    key = src / ".modelfleet" / "credentials" / "token-signing-key.pem"
    key.parent.mkdir()
    key.write_text("-----BEGIN PRIVATE KEY-----")
    target = {"key.pem": key, "meta": src / ".modelfleet", "deep/k": Path("../.modelfleet/credentials")}[link]
    (src / link).symlink_to(target)
    with pytest.raises(ConfigError, match=rf"symlink {link} .*points into \.modelfleet.*\.amlignore"):
        make_snapshot(src, tmp_path / "s.zip")
    (src / ".amlignore").write_text(link + "\n")
    out = tmp_path / "s.zip"
    make_snapshot(src, out)
    with zipfile.ZipFile(out) as zf:
        assert not any(b"PRIVATE KEY" in zf.read(n) for n in zf.namelist())
        assert not any(".modelfleet" in n for n in zf.namelist())


def test_symlink_into_git_metadata_is_refused(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {"score.py": "", ".git/config": "[remote] token = x"})
    (src / "cfg").symlink_to(".git/config")
    with pytest.raises(ConfigError, match=r"points into \.git"):
        make_snapshot(src, tmp_path / "s.zip")


def test_symlink_inside_is_stored_as_its_target(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {"real/config.json": "{}", "score.py": ""})
    (src / "config.json").symlink_to("real/config.json")
    (src / "alias").symlink_to("real", target_is_directory=True)
    out = tmp_path / "s.zip"
    make_snapshot(src, out)
    with zipfile.ZipFile(out) as zf:
        assert zf.read("config.json") == b"{}"
        assert zf.read("alias/config.json") == b"{}"
        assert not any(stat.S_ISLNK(i.external_attr >> 16) for i in zf.infolist())


def test_symlink_loop_is_refused(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {"sub/score.py": ""})
    (src / "sub" / "up").symlink_to("..", target_is_directory=True)
    with pytest.raises(ConfigError, match="up.*holds it"):
        make_snapshot(src, tmp_path / "s.zip")


# -- size and extraction ---------------------------------------------------------------------


def test_size_limit(tmp_path: Path) -> None:
    assert MAX_SNAPSHOT_BYTES == 300 * 1024 * 1024  # v1's limit
    src = _tree(tmp_path / "src", {"score.py": ""})
    (src / "big.bin").write_bytes(b"\0" * (2 * 1024 * 1024))
    with pytest.raises(ConfigError, match=r"2\.0 MB of files, over the 1 MB snapshot limit.*\.amlignore"):
        make_snapshot(src, tmp_path / "s.zip", max_bytes=1024 * 1024)
    (src / ".amlignore").write_text("*.bin\n")
    make_snapshot(src, tmp_path / "s.zip", max_bytes=1024 * 1024)


@pytest.mark.parametrize("evil", ["../escape.txt", "a/../../escape.txt", "/abs.txt", "C:/x.txt", "a\\..\\x"])
def test_extract_refuses_entries_that_escape(tmp_path: Path, evil: str) -> None:
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("fine.txt", "ok")
        info = zipfile.ZipInfo("placeholder")
        info.filename = evil  # ZipInfo normalises some names; set the raw one
        zf.writestr(info, "pwned")
    dest = tmp_path / "deep" / "dest"
    with pytest.raises(ConfigError, match="outside"):
        extract_snapshot(bad, dest)
    assert not (dest / "fine.txt").exists()  # checked before anything is written
    assert not (tmp_path / "deep" / "escape.txt").exists() and not (tmp_path / "escape.txt").exists()


def test_extract_does_not_follow_a_symlink_already_in_dest(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("out/x.txt", "pwned")
    dest = tmp_path / "dest"
    dest.mkdir()
    (tmp_path / "victim").mkdir()
    (dest / "out").symlink_to(tmp_path / "victim", target_is_directory=True)
    with pytest.raises(ConfigError, match="outside"):
        extract_snapshot(bad, dest)
    assert not (tmp_path / "victim" / "x.txt").exists()


def test_store_snapshots_are_stored_once_and_round_trip(store: Store, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src", {"score.py": "def init(): pass\n", "lib/u.py": "U = 1\n"})
    first = store.put_snapshot(src)
    assert store.put_snapshot(src) == first
    blob = store.blobs.path(first)
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == first
    assert list(store.blobs.tmp_dir.iterdir()) == []
    dest = tmp_path / "app"
    store.extract_snapshot(first, dest)
    assert (dest / "score.py").read_text() == "def init(): pass\n"
    assert (dest / "lib" / "u.py").read_text() == "U = 1\n"
    with pytest.raises(NotFound, match="snapshot"):
        store.extract_snapshot("f" * 64, dest)
