"""Registering and deploying a large model through each workspace backend, against a plain file copy.

    .venv/bin/python bench/shared_blobs.py [--mb 200] [--no-deploy] [--keep]

One model file of ``--mb`` MB of random bytes, registered and deployed through each backend:

- disk: SQLite and the blobs in the workspace's folder (the embedded default);
- Azurite: SQLite, blobs in Azurite (the Azure Storage emulator, npm ``azurite``);
- PostgreSQL + Azurite: metadata in PostgreSQL 15 (Debian's; a throwaway cluster made with
  ``initdb`` as the ``postgres`` user, as tests/store does), blobs in Azurite.

For each, in one workspace (its local cluster started before the clock):

1. register: ``Model.register`` (hash into the read cache; for Azurite, the resumable upload,
   the read-back and its sha256 check, the server-side move);
2. deploy cold: ``Model.deploy`` to Healthy with the model's blob removed from the read cache
   first, so the daemon downloads it (hash-checked) before laying it out; for disk the blobs
   are the store, so nothing is downloaded;
3. deploy warm: a second service of the same model, the read cache warm;
4. layout cold / warm: ``Store.materialize_model`` alone (what a deploy does with the bytes),
   with the blob removed from the read cache, then with it there.

The reference is a plain file copy of the same bytes on the same disk (``shutil.copyfile``,
as ``cp`` does it: no fsync), best of 3, measured in the same run; each row prints its
seconds, its MB/s and its throughput ÷ the copy's. A deploy also starts a replica (this
interpreter, a trivial score.py): that constant is in the deploy rows, not in the layout
rows. The page cache holds the source file throughout (it was just written).

Placement on a 2-core machine: the servers (Azurite, PostgreSQL) on CPU 0, everything of
modelfleet (this process, the daemon and its replicas, which inherit it) on CPU 1, set with
``sched_setaffinity`` before each is started. All traffic is to 127.0.0.1; the servers are
children of this process (``setpriv --pdeathsig``) and stop with it. Everything lives in a
temporary folder removed at the end (``--keep`` keeps it). Never run inside the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from _common import kill_pids, loadavg, machine

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "store"))

from object_servers import running_azurite  # noqa: E402
from postgres import running_postgres  # noqa: E402

from modelfleet import AksWebservice, Environment, InferenceConfig, Model, Workspace  # noqa: E402

SCORE = """\
import os

def init():
    global size
    size = os.path.getsize(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model.bin"))

def run(raw_data):
    import json
    return [sum(json.loads(raw_data)["data"][0])]
"""
BODY = '{"data": [[1,2,3,4,5,6,7,8,9,10]]}'
SERVERS_CPU, MODELFLEET_CPU = {0}, {1}


@dataclass
class Row:
    backend: str
    step: str
    seconds: float


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 8 * 1024 * 1024))
            f.write(chunk)
            left -= len(chunk)


def plain_copy(src: Path, dst: Path) -> float:
    """Seconds for a copy as ``cp`` makes it (copy_file_range, no fsync)."""
    seconds = timed(lambda: shutil.copyfile(src, dst))
    dst.unlink()
    return seconds


def forget(ws: Workspace, digest: str) -> None:
    """Empty the read cache of one blob, so that the next use downloads it (a shared store only)."""
    cached = ws.store.root / ".modelfleet" / "blobs" / digest[:2] / digest[2:]
    if ws.store.blob_store_url is not None:
        cached.unlink()


def deploy(ws: Workspace, name: str, model: Model, source: Path) -> float:
    ic = InferenceConfig(entry_script="score.py", source_directory=source, environment=Environment("bench"))
    dc = AksWebservice.deploy_configuration(num_replicas=1, auth_enabled=False)
    started = time.perf_counter()
    service = Model.deploy(ws, name, [model], ic, dc)
    service.wait_for_deployment(timeout_sec=600)
    seconds = time.perf_counter() - started
    answer = service.run(BODY)
    if answer != [55] or service.state != "Healthy":
        raise SystemExit(f"{name}: state {service.state}, answer {answer!r}: {service.get_logs()[-2000:]}")
    return seconds


def one_backend(
    label: str, root: Path, model_file: Path, source: Path, backends: dict[str, str], with_deploy: bool
) -> list[Row]:
    ws = Workspace.create("bench", root / label.replace(" ", "-").replace("+", ""), **backends)
    rows: list[Row] = []
    try:
        if with_deploy:
            ws.cluster().ensure_running()  # started before the clock: rows time the work alone
        model: Model | None = None

        def register() -> None:
            nonlocal model
            model = Model.register(ws, model_path=model_file, model_name="big")

        rows.append(Row(label, "register", timed(register)))
        assert model is not None
        record = ws.store.get_model("big")
        digest = record.files[0].digest
        if with_deploy:
            forget(ws, digest)
            rows.append(Row(label, "deploy cold", deploy(ws, "cold", model, source)))
            rows.append(Row(label, "deploy warm", deploy(ws, "warm", model, source)))
        forget(ws, digest)
        rows.append(Row(label, "layout cold", timed(lambda: ws.store.materialize_model(record, root / "lay-cold"))))
        rows.append(Row(label, "layout warm", timed(lambda: ws.store.materialize_model(record, root / "lay-warm"))))
        for folder in ("lay-cold", "lay-warm"):
            for f in (root / folder).rglob("*"):
                f.chmod(0o600)
            shutil.rmtree(root / folder)
    finally:
        if with_deploy:
            stop(ws)
        ws.store.close()
    return rows


def stop(ws: Workspace) -> None:
    """Stop the cluster this run started; if it does not stop, kill its daemon by pid."""
    info = ws.cluster().info()
    try:
        ws.cluster().stop()
    except Exception as exc:  # noqa: BLE001 - cleanup goes on whatever went wrong
        print(f"warning: {exc}; killing the daemon", file=sys.stderr)
        if info is not None:
            kill_pids([int(info["pid"])])


@contextlib.contextmanager
def pinned(cpus: set[int]) -> Iterator[None]:
    """This process on ``cpus`` while the block runs; what it starts meanwhile keeps them."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=200, help="model size in MB (10^6 bytes)")
    ap.add_argument("--no-deploy", action="store_true", help="register and layout only (no local cluster)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    size = args.mb * 10**6
    started_at = datetime.datetime.now().astimezone()
    load_before = loadavg()
    root = Path(tempfile.mkdtemp(prefix="modelfleet-bench-blobs-"))
    pinning = len(os.sched_getaffinity(0)) >= 2
    rows: list[Row] = []
    try:
        with contextlib.ExitStack() as servers:
            with pinned(SERVERS_CPU) if pinning else contextlib.nullcontext():
                azurite = servers.enter_context(running_azurite())
                pg = servers.enter_context(running_postgres())
            if pinning:
                os.sched_setaffinity(0, MODELFLEET_CPU)  # the daemon and replicas inherit it
            os.environ.update(azurite.env)  # as from the user's shell; the daemons read it
            import fsspec

            container = f"bench{uuid.uuid4().hex[:8]}"
            fsspec.filesystem("az", skip_instance_cache=True).mkdir(container)

            model_file = root / "model.bin"
            write_random(model_file, size)
            source = root / "src"
            source.mkdir()
            (source / "score.py").write_text(SCORE)
            copies = [plain_copy(model_file, root / "copy.bin") for _ in range(3)]
            copy_s = min(copies)

            backends = {
                "disk": {},
                "Azurite": {"blob_store": f"az://{container}/sqlite"},
                "PostgreSQL + Azurite": {"database": pg.new_database(), "blob_store": f"az://{container}/pg"},
            }
            for label, backend in backends.items():
                rows += one_backend(label, root, model_file, source, backend, not args.no_deploy)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    mb = size / 1e6
    print(f"modelfleet shared_blobs bench, {started_at:%Y-%m-%d %H:%M %Z}")
    print(f"machine: {machine()}")
    print(f"load average before: {load_before}, after: {loadavg()}")
    where = "servers on CPU 0, modelfleet (bench, daemon, replicas) on CPU 1" if pinning else "not pinned"
    print(f"placement: {where}; model {mb:.0f} MB of random bytes")
    print(f"reference: a plain file copy (as cp: no fsync), best of 3: {copy_s:.3f} s = {mb / copy_s:.0f} MB/s")
    print()
    print(f"{'backend':<22}{'step':<13}{'seconds':>9}{'MB/s':>8}{'÷ copy':>9}")
    for row in rows:
        print(f"{row.backend:<22}{row.step:<13}{row.seconds:>9.2f}{mb / row.seconds:>8.0f}{copy_s / row.seconds:>9.3f}")
    print()
    print("÷ copy: the step's throughput over the plain copy's (1 = as fast as copying the file once).")
    print("deploy rows include starting a replica; layout rows are the bytes' part of a deploy alone.")
    print(json.dumps({r.backend + " / " + r.step: round(r.seconds, 3) for r in rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
