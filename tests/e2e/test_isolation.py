"""Replica isolation: a replica can never change the model store, runs unprivileged when the
daemon is root (where the interpreter allows), and is held to memory_gb_limit by a memory
cgroup, an out-of-memory kill reported as such. Real daemon, real replicas, real cgroups."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from e2e_support import deploy, root_daemon_with_nobody_replicas, stop_cluster, system_python, wait_until
from modelfleet import Model, Workspace
from modelfleet.errors import DeploymentFailed
from modelfleet.store.registry import Store
from modelfleet.targets import isolation
from modelfleet.targets.base import ReplicaPlan

ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    workspace = Workspace.create("iso", tmp_path_factory.mktemp("ws"))
    yield workspace
    stop_cluster(workspace)


def _score(service: object, body: dict[str, object]) -> requests.Response:
    key = service.get_keys()[0]  # type: ignore[attr-defined]
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return requests.post(service.scoring_uri, data=json.dumps(body), headers=headers, timeout=60)  # type: ignore[attr-defined]


# -- defect 7: a replica's writes never reach the store -------------------------------------


def test_a_replica_that_writes_its_model_file_cannot_change_the_blob(ws: Workspace, tmp_path: Path) -> None:
    source = tmp_path / "weights.json"
    source.write_text(json.dumps({"weight": 1}))
    model = Model.register(ws, model_path=source, model_name="shared")
    blob = ws.store.blobs.path(ws.store.get_model("shared", 1).files[0].digest)

    tamper = deploy(ws, "tamper", "tamper_model", models=[model])
    answer = _score(tamper, {}).json()
    # Whatever the script managed (as root: chmod and write its own copy; unprivileged: neither),
    # the stored blob is unchanged, still read-only, and a second service sees the original.
    assert answer["outcome"]["write"] in ("done", "PermissionError"), answer
    assert json.loads(blob.read_text()) == {"weight": 1}
    assert stat.S_IMODE(blob.stat().st_mode) == 0o444
    reader = deploy(ws, "reader", "read_model", models=[model])
    assert _score(reader, {}).json() == {"model": {"weight": 1}}
    for service in (tamper, reader):
        service.delete()


@pytest.mark.skipif(not ROOT, reason="dropping privileges needs a root daemon")
def test_a_root_daemon_says_why_when_replicas_cannot_run_unprivileged(ws: Workspace, tmp_path: Path) -> None:
    source = tmp_path / "weights.json"
    source.write_text(json.dumps({"weight": 2}))
    model = Model.register(ws, model_path=source, model_name="who")
    service = deploy(ws, "who", "tamper_model", models=[model])
    answer = _score(service, {}).json()
    log = service.get_logs()
    if answer["uid"] == 0:  # this interpreter is not reachable by nobody: the log says so, and what to do
        assert "runs as root: the interpreter" in log and "not reachable by user nobody" in log
    else:
        assert answer["uid"] == pwd.getpwnam("nobody").pw_uid and "runs as user nobody" in log
    service.delete()


@pytest.mark.skipif(not ROOT or system_python() is None, reason="needs root and a system python3 of this version")
def test_a_root_daemon_runs_replicas_as_nobody_who_cannot_touch_the_store() -> None:
    with root_daemon_with_nobody_replicas("drop") as workspace:
        top = workspace.path.parent
        (top / "weights.json").write_text(json.dumps({"weight": 3}))
        model = Model.register(workspace, model_path=top / "weights.json", model_name="w")
        service = deploy(workspace, "who", "tamper_model", models=[model])
        answer = _score(service, {}).json()
        assert answer == {
            "outcome": {"chmod": "PermissionError", "write": "PermissionError"},
            "model": {"weight": 3},
            "uid": pwd.getpwnam("nobody").pw_uid,
        }
        assert "runs as user nobody" in service.get_logs()
        # what it must still write: its log (rotated by itself), its socket or port file, collected data
        collecting = deploy(workspace, "collect", "telemetry", collect_model_data=True)
        assert _score(collecting, {"i": 2}).json() == {"double": 4}
        data = workspace.path / ".modelfleet" / "data" / "collect"
        wait_until(lambda: any(p.is_file() and p.stat().st_size for p in data.rglob("*")), timeout=30)
        meta = workspace.path / ".modelfleet"
        assert stat.S_IMODE((meta / "blobs").stat().st_mode) & 0o077 == 0
        assert stat.S_IMODE(meta.stat().st_mode) & 0o007 == 0  # nothing for other users


@pytest.mark.skipif(not ROOT or not Path("/usr/bin/python3").exists(), reason="needs root and /usr/bin/python3")
def test_an_unprivileged_replica_can_write_its_folders_and_nothing_of_the_store() -> None:
    # A workspace and an interpreter the user nobody can reach (pytest's tmp folder is 0700):
    # the spawn options isolation gives, applied to a real process.
    top = Path(tempfile.mkdtemp(prefix="mf-iso-"))
    try:
        os.chmod(top, 0o755)
        store = Store.create(top / "ws", "ws")
        (top / "m.bin").write_bytes(b"weights")
        record = store.register_model("m", top / "m.bin")
        service_dir = store.runtime_dir / "services" / "s"
        app = service_dir / "g1" / "app"
        store.materialize_model(record, app / "azureml-models" / "m" / "1")
        (service_dir / "logs").mkdir(parents=True)
        (service_dir / "run").mkdir()
        log_path = service_dir / "logs" / "replica-0.log"
        log_path.touch()
        blob = store.blobs.path(record.files[0].digest)
        plan = ReplicaPlan("s", 1, "/usr/bin/python3", app, app / "score.py", {}, 1)
        env = {"PATH": "/usr/bin:/bin", "HOME": "/root"}
        options = isolation.spawn_options(
            plan, "s-1-0", log_path, service_dir / "run", None, then=lambda: None, env=env
        )
        probe = f"""
import os, json
out = {{"uid": os.getuid()}}
model = "{app}/azureml-models/m/1/m.bin"
def attempt(name, fn):
    try:
        fn(); out[name] = "done"
    except OSError as exc:
        out[name] = type(exc).__name__
attempt("chmod_model", lambda: os.chmod(model, 0o666))
attempt("write_model", lambda: open(model, "r+b").write(b"EVIL"))
attempt("read_model", lambda: open(model, "rb").read())
attempt("read_blob", lambda: open("{blob}", "rb").read())
attempt("write_blob", lambda: open("{blob}", "r+b").write(b"EVIL"))
attempt("read_db", lambda: open("{store.root / ".modelfleet" / "metadata.db"}", "rb").read())
attempt("write_run", lambda: open("{service_dir / "run" / "x.port"}", "w").write("1"))
attempt("append_log", lambda: open("{log_path}", "a").write("hello"))
attempt("rotate_log", lambda: os.rename("{log_path}", "{log_path}.1"))
def cache_in_home():
    os.makedirs(os.path.expanduser("~/.cache/lib"), exist_ok=True)
    open(os.path.expanduser("~/.cache/lib/x"), "w").write("1")
attempt("write_home_cache", cache_in_home)
print(json.dumps(out))
"""
        done = subprocess.run(
            ["/usr/bin/python3", "-c", probe], cwd=app, capture_output=True, text=True, timeout=30, env=env, **options
        )
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        assert out == {
            "uid": pwd.getpwnam("nobody").pw_uid,
            "chmod_model": "PermissionError",
            "write_model": "PermissionError",
            "read_model": "done",
            "read_blob": "PermissionError",
            "write_blob": "PermissionError",
            "read_db": "PermissionError",
            "write_run": "done",
            "append_log": "done",
            "rotate_log": "done",
            "write_home_cache": "done",  # a HOME of its own, not the daemon's (root's) one
        }
        assert env["HOME"] == str(service_dir / "run" / "home")
        assert blob.read_bytes() == b"weights"
        store.close()
    finally:
        shutil.rmtree(top, ignore_errors=True)


# -- defect 8: memory_gb_limit --------------------------------------------------------------


def _cgroup_available() -> bool:
    cgroup, _ = isolation.memory_cgroup("probe-availability", 64 * 1024 * 1024)
    if cgroup is not None:
        cgroup.path.rmdir()
    return cgroup is not None


def test_memory_limit_kills_a_replica_that_allocates_past_it_and_says_so(ws: Workspace) -> None:
    if not _cgroup_available():
        # no memory cgroup here: the limit is not enforced, and the replica's log says so
        service = deploy(ws, "hog", "hog_memory", memory_gb=0.1, memory_gb_limit=0.25)
        assert "memory_gb_limit 0.25 GB is NOT enforced on this machine" in service.get_logs()
        wait_until(lambda: "memory_gb_limit 0.25 GB is not enforced on this machine" in (service.error or ""))
        service.delete()
        return
    # In init(): the deployment fails, and the error says it ran out of memory.
    failing = deploy(ws, "hog-init", "hog_init", wait=False, memory_gb=0.1, memory_gb_limit=0.25)
    with pytest.raises(DeploymentFailed, match="out of memory"):
        failing.wait_for_deployment(timeout_sec=90)
    assert "out of memory" in (failing.error or "")
    assert "memory limited to 0.25 GB" in failing.get_logs()
    assert "killed: out of memory (over memory_gb_limit 0.25 GB" in failing.get_logs()
    failing.delete()

    # In run(): that request fails, the replica's log says why, and the replica comes back.
    service = deploy(ws, "hog", "hog_memory", memory_gb=0.1, memory_gb_limit=0.25)
    assert _score(service, {"mb": 50}).json() == {"held_mb": 50}  # well within the limit
    killed = _score(service, {"mb": 600})
    assert killed.status_code in (502, 503), killed.text
    wait_until(lambda: "killed: out of memory" in service.get_logs(), timeout=30)
    wait_until(lambda: _score(service, {"mb": 10}).status_code == 200, timeout=90, interval=0.5)
    service.delete()


def test_where_no_memory_cgroup_can_be_made_the_limit_is_said_to_be_unenforced(tmp_path: Path) -> None:
    # a cgroup mount with no memory controller (an empty folder stands for one)
    cgroup, reason = isolation.memory_cgroup("svc-1-0", 2**30, root=tmp_path)
    assert cgroup is None and "no memory cgroup controller" in reason
    note = isolation.memory_limit_note(2**30, root=tmp_path)
    assert note == "memory_gb_limit 1 GB is not enforced on this machine: no memory cgroup controller is available here"
    assert isolation.memory_limit_note(None, root=tmp_path) is None  # no limit asked: nothing to say
    # where cgroups work (this machine, as root), a limit gets no note
    assert (isolation.memory_limit_note(2**30) is None) == _cgroup_available()


def test_cgroup_v2_files_are_written_as_the_kernel_expects(tmp_path: Path) -> None:
    # The v2 layout cannot be made on this machine (memory is a v1 controller here), so a
    # folder stands in for the mount, holding what the kernel would show; the code's reads and
    # writes are checked, the kernel's enforcement is not.
    own = isolation._own_cgroups().get("")
    if own is None:
        pytest.skip("this process has no cgroup v2 path")
    here = tmp_path / own.lstrip("/")
    here.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (here / "cgroup.controllers").write_text("cpu memory pids\n")
    (here / "cgroup.subtree_control").write_text("memory\n")  # already handed down: no move
    parent = here / f"modelfleet-{os.getpid()}"
    parent.mkdir()
    (parent / "cgroup.subtree_control").write_text("memory\n")
    cgroup, reason = isolation.memory_cgroup("svc-1-0", 256 * 1024**2, root=tmp_path)
    assert cgroup is not None and cgroup.version == 2, reason
    assert cgroup.path.parent == parent
    assert (cgroup.path / "memory.max").read_text() == str(256 * 1024**2)
    assert (cgroup.path / "memory.swap.max").read_text() == "0"  # swap must not stretch the limit
    assert (cgroup.path / "memory.oom.group").read_text() == "1"
    assert cgroup.oom_kills() == 0
    (cgroup.path / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cgroup.oom_kills() == 1
    # where the controller cannot be handed down (v2 answers EBUSY when other processes share the
    # daemon's cgroup; here the move into the leaf fails), the reason is given, not an exception
    (here / "cgroup.subtree_control").write_text("")
    (here / "modelfleet-daemon" / "cgroup.procs").mkdir(parents=True)
    note = isolation._v2_parent(here)
    assert isinstance(note, str) and "cannot enable the memory controller below" in note
    assert "systemd-run" in note
