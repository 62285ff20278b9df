"""The stored form of a service: its settings, its models and a snapshot of its source.

``Model.deploy`` and ``Webservice.update`` both build it here; everything in it is checked
before anything is written (``control/layout.py`` turns it into an app folder).
"""

from __future__ import annotations

import ast
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelfleet.errors import ConfigError
from modelfleet.sdk.registered import RegisteredModel
from modelfleet.sdk.workspace_base import WorkspaceBase
from modelfleet.spec import DeploySpec, EnvironmentSpec, InferenceSpec
from modelfleet.spec.names import check_model_count


def build_config(
    workspace: WorkspaceBase, models: Sequence[RegisteredModel], inference: InferenceSpec, spec: DeploySpec
) -> dict[str, Any]:
    if not isinstance(models, list | tuple) or not all(isinstance(m, RegisteredModel) for m in models):
        raise ConfigError("models must be a list of Model objects (e.g. [Model(ws, 'name')])")
    check_model_count(len(models))  # before the source snapshot is stored
    if len({m.name for m in models}) != len(models):
        raise ConfigError("models must not hold two versions of the same model name (v1 lays them out by name)")
    check_batching(inference, spec)
    return {
        "deploy": spec.to_dict(),
        "inference": snapshot_source(workspace, inference),
        "environment": (inference.environment or EnvironmentSpec(name="default")).to_dict(),
        "models": model_refs(models),
    }


def check_batching(inference: InferenceSpec, spec: DeploySpec) -> None:
    """``max_batch_size`` > 1 needs ``run_batch(items)`` in the entry script: refused here when the
    script plainly has none (the name appears nowhere in it and nothing is star-imported). What
    cannot be told from the text is checked by the replica at load (modelfleet.replica.batching)."""
    if spec.max_batch_size <= 1:
        return
    source = Path(inference.source_directory) if inference.source_directory else None
    script = source / inference.entry_script if source else Path(inference.entry_script).expanduser()
    try:
        tree = ast.parse(script.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return  # missing or unreadable: the snapshot's own checks (or the replica) say so
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names = {node.name}
        elif isinstance(node, ast.alias):
            names = {node.asname or node.name.rpartition(".")[2], node.name}
        elif isinstance(node, ast.Name):
            names = {node.id}
        elif isinstance(node, ast.Attribute):
            names = {node.attr}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = {node.value}
        else:
            continue
        if "run_batch" in names or "V2_BATCHED" in names or "*" in names:
            return
    raise ConfigError(
        f"max_batch_size={spec.max_batch_size} needs run_batch(items) in entry_script {inference.entry_script!r}, "
        "which defines none; define it (one answer per item, same order) or leave max_batch_size at 1"
    )


def model_refs(models: Sequence[RegisteredModel]) -> list[dict[str, Any]]:
    check_model_count(len(models))  # deploy and update both come through here
    return [{"name": m.name, "version": m.version} for m in models]


def snapshot_source(workspace: WorkspaceBase, inference: InferenceSpec) -> dict[str, Any]:
    """Store the entry script's folder (or the script alone) and say how to find it again."""
    if inference.source_directory:
        source = Path(inference.source_directory)
        if not source.is_dir():
            raise ConfigError(f"source_directory {source} is not a folder")
        script = source / inference.entry_script
        if not script.is_file():
            raise ConfigError(
                f"entry_script {inference.entry_script!r} not found in source_directory {source}; "
                "entry_script is relative to source_directory"
            )
        digest = workspace.store.put_snapshot(source)
        return {"entry_script": inference.entry_script, "source_name": source.name, "snapshot": digest}
    script = Path(inference.entry_script).expanduser()
    if not script.is_file():
        raise ConfigError(
            f"entry_script {script} not found (no source_directory given, so it is relative to {Path.cwd()})"
        )
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy2(script, Path(tmp) / script.name)
        digest = workspace.store.put_snapshot(Path(tmp))
    return {"entry_script": script.name, "source_name": "source", "snapshot": digest}
