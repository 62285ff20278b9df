"""The app folder of one service generation, laid out as v1 lays out its containers.

```
<app root>/                       cwd of every replica, AML_APP_ROOT
  azureml-models/<name>/<version>/<the model's files>
  <source directory name>/        the unpacked source snapshot, on sys.path
      score.py                    AZUREML_ENTRY_SCRIPT (relative to the folder above)
```

Model files are read-only copies of the workspace's blobs (``Store.materialize_model``), so
a replica that writes to one cannot change the stored model. Each model version is copied once
per service, into ``<service>/models/<name>/<version>/`` (written aside, then renamed into
place, so a crash never leaves half a copy), and every generation's folder hard-links that
copy's files: a redeploy that keeps most models lays out only the new ones (a registered
version never changes). The generations of one service share those copies, as the replicas
of one generation share theirs; other services and the blobs never do. A copy is reused only
while every file still has the size, mode (0444) and modification time it was written with
(``.<version>.json`` beside it): a replica that wrote to its model gets the next generation a
fresh copy. A copy no generation links any more is removed with the last generation that used it.

``AZUREML_MODEL_DIR`` is the version folder when the service has one model, and
``azureml-models`` when it has several, so ``os.getenv("AZUREML_MODEL_DIR")`` and
``Model.get_model_path(name)`` resolve in real v1 scripts as they did in v1.

The service config (written by the SDK, stored in the workspace) is a plain dict:
``{"deploy": DeploySpec.to_dict(), "inference": {"entry_script", "source_name",
"snapshot"}, "environment": EnvironmentSpec.to_dict(), "models": [{"name", "version"}]}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelfleet.replica.config import BATCH_DELAY_ENV, BATCH_SIZE_ENV
from modelfleet.replica.models import CACHE_MEMORY_ENV, CACHE_SIZE_ENV
from modelfleet.spec import DeploySpec
from modelfleet.spec.names import check_model_count
from modelfleet.store.registry import META_DIR, Store
from modelfleet.targets.gpus import GPUS_ENV
from modelfleet.targets.isolation import MEMORY_LIMIT_ENV, memory_limit_note
from modelfleet.telemetry.data_layout import service_data_dir

MODELS_FOLDER = "azureml-models"
SHARED_MODELS = "models"  # <service>/models/<name>/<version>: the copies generations link


@dataclass(frozen=True)
class AppLayout:
    app_root: Path
    entry_script: Path
    environment: dict[str, str]


def generation_dir(runtime_dir: Path, service: str, generation: int) -> Path:
    return runtime_dir / "services" / service / f"g{generation}"


def prepare_app(store: Store, service: str, generation: int, config: dict[str, Any]) -> AppLayout:
    """Write the app folder for one generation (idempotent: rebuilt from the store each time)."""
    app_root = generation_dir(store.runtime_dir, service, generation) / "app"
    if app_root.exists():
        shutil.rmtree(app_root)
    models_root = app_root / MODELS_FOLDER
    models_root.mkdir(parents=True)
    refs = config.get("models", [])
    check_model_count(len(refs))
    for ref in refs:
        name, version = ref["name"], int(ref["version"])
        _link_tree(_service_copy(store, service, name, version), models_root / name / str(version))

    inference = config["inference"]
    source_name = inference.get("source_name") or "source"
    source_dir = app_root / source_name
    source_dir.mkdir()
    if inference.get("snapshot"):
        store.extract_snapshot(inference["snapshot"], source_dir)
    entry_script = source_dir / inference["entry_script"]

    model_dir = models_root / refs[0]["name"] / str(refs[0]["version"]) if len(refs) == 1 else models_root
    deploy = DeploySpec.from_dict(config["deploy"])
    environment = {
        "AML_APP_ROOT": str(app_root),
        "AZUREML_MODEL_DIR": str(model_dir),
        "AZUREML_SOURCE_DIRECTORY": str(source_dir),
        "AZUREML_ENTRY_SCRIPT": inference["entry_script"],
        "SCORING_TIMEOUT_MS": str(deploy.scoring_timeout_ms),
        "WORKER_COUNT": str(deploy.replica_max_concurrent_requests),
    }
    if deploy.gpu_cores:  # the local target hands the replica its devices (targets/gpus.py)
        environment[GPUS_ENV] = str(deploy.gpu_cores)
    if deploy.model_cache_size is not None:  # models loaded on demand (replica/models.py)
        environment[CACHE_SIZE_ENV] = str(deploy.model_cache_size)
    if deploy.model_cache_memory_gb is not None:
        environment[CACHE_MEMORY_ENV] = str(_bytes(deploy.model_cache_memory_gb))
    if deploy.max_batch_size > 1:  # dynamic batching (replica/batching.py)
        environment[BATCH_SIZE_ENV] = str(deploy.max_batch_size)
        environment[BATCH_DELAY_ENV] = str(deploy.max_batch_delay_ms)
    if deploy.memory_gb_limit is not None:  # enforced by the local target (targets/isolation.py)
        environment[MEMORY_LIMIT_ENV] = str(_bytes(deploy.memory_gb_limit))
    # the service's models: named in collected records, and the versions V2 paths may name (replica/v2.py)
    environment["MODELFLEET_MODELS"] = ",".join(f"{r['name']}:{r['version']}" for r in refs) or f"{service}:0"
    if deploy.collect_model_data:  # the replica records inputs and predictions (telemetry/collect.py)
        environment["MODELFLEET_DATA_DIR"] = str(service_data_dir(store.root / META_DIR, service))
    environment.update(config.get("environment", {}).get("environment_variables") or {})
    return AppLayout(app_root=app_root, entry_script=entry_script, environment=environment)


def limits_note(spec: DeploySpec) -> str | None:
    """What the service's state detail says about a limit this machine cannot enforce, or None."""
    return memory_limit_note(None if spec.memory_gb_limit is None else _bytes(spec.memory_gb_limit))


def _bytes(gb: float) -> int:
    return int(gb * 1024**3)


def remove_generation(runtime_dir: Path, service: str, generation: int) -> None:
    shutil.rmtree(generation_dir(runtime_dir, service, generation), ignore_errors=True)
    _remove_unlinked_copies(runtime_dir / "services" / service / SHARED_MODELS)


def _service_copy(store: Store, service: str, name: str, version: int) -> Path:
    """The service's copy of model ``name:version``, laid out on first use."""
    copy = store.runtime_dir / "services" / service / SHARED_MODELS / name / str(version)
    manifest = copy.parent / f".{version}.json"
    if copy.is_dir():
        with contextlib.suppress(OSError, ValueError):
            if json.loads(manifest.read_text()) == _manifest(copy):
                return copy
        shutil.rmtree(copy)  # changed since it was written: generations that link it keep their files
    aside = copy.parent / f".{version}.{os.getpid()}.partial"
    shutil.rmtree(aside, ignore_errors=True)
    aside.mkdir(parents=True)
    store.materialize_model(store.get_model(name, version), aside)
    manifest.write_text(json.dumps(_manifest(aside)))
    os.rename(aside, copy)
    return copy


def _manifest(copy: Path) -> dict[str, list[int]]:
    """Each file's size, mode and modification time: what a write or chmod would change."""
    out = {}
    for path in sorted(p for p in copy.rglob("*") if p.is_file()):
        st = path.stat()
        out[str(path.relative_to(copy))] = [st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns]
    return out


def _link_tree(source: Path, dest: Path) -> None:
    for folder, _dirs, files in os.walk(source):
        here = dest / Path(folder).relative_to(source)
        here.mkdir(parents=True, exist_ok=True)
        for file in files:
            os.link(Path(folder) / file, here / file)


def _remove_unlinked_copies(shared: Path) -> None:
    """Remove model copies whose files no generation links any more (link count 1)."""
    if not shared.is_dir():
        return
    for copy in [v for n in shared.iterdir() if n.is_dir() for v in n.iterdir() if v.is_dir()]:
        files = [p for p in copy.rglob("*") if p.is_file()]
        if all(p.stat().st_nlink == 1 for p in files):
            shutil.rmtree(copy, ignore_errors=True)
            (copy.parent / f".{copy.name}.json").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                copy.parent.rmdir()  # the model's folder, once its last version is gone
