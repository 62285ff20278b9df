"""v1's ``azureml.core.model.Model.get_model_path`` and ``azureml.exceptions``, as a scoring
script inside a service uses them (served by ``compat`` when azureml-core is not installed)."""

from __future__ import annotations

import os
from typing import Any


class AzureMLException(Exception):
    def __init__(self, exception_message: str = "", *args: Any, **kwargs: Any) -> None:
        super().__init__(exception_message, *args)
        self.message = exception_message


class WebserviceException(AzureMLException):
    pass


class ModelNotFoundException(WebserviceException):
    pass


def _model_roots() -> list[str]:
    # v1 reads these from the environment of the serving process at call time; so do we.
    roots: list[str] = []
    model_dir = os.environ.get("AZUREML_MODEL_DIR")
    if model_dir:
        trimmed = model_dir.rstrip("/\\") or model_dir
        grandparent = os.path.dirname(os.path.dirname(trimmed))
        if os.path.basename(grandparent) == "azureml-models":
            roots.append(grandparent)  # one model: .../azureml-models/<name>/<version>
        else:
            roots.append(trimmed)  # several models: .../azureml-models, or any folder of <name>/<version>
    roots.append(os.path.join(os.environ.get("AML_APP_ROOT", ""), "azureml-models"))
    return list(dict.fromkeys(roots))


def _latest_version(folder: str) -> int | None:
    versions = [int(v) for v in os.listdir(folder) if v.isdigit()]
    return max(versions) if versions else None


class Model:
    """The part of v1's ``azureml.core.model.Model`` a scoring script uses: ``get_model_path``."""

    @staticmethod
    def get_model_path(model_name: str, version: int | None = None, _workspace: Any = None) -> str:
        """Path of a deployed model, resolved as v1 does inside a service.

        Looks for ``<models>/<model_name>/<version>`` (the latest version when none is given)
        under the folder ``AZUREML_MODEL_DIR`` names (its ``azureml-models`` grandparent when it
        points at one model's version folder) and then under ``$AML_APP_ROOT/azureml-models``.
        Returns the single file or folder inside the version folder, or the version folder when
        it holds several entries; paths are absolute when those variables are. Falls back to
        ``model_name`` as a path relative to the current folder.
        """
        if version is not None and not isinstance(version, int):
            raise WebserviceException("version should be an int")
        if model_name is None:
            raise WebserviceException("model_name is None")
        roots = _model_roots()
        for root in roots:
            folder = os.path.join(root, model_name)
            if not os.path.isdir(folder):
                continue
            chosen = version if version is not None else _latest_version(folder)
            if chosen is None:
                continue
            version_dir = os.path.join(folder, str(chosen))
            if not os.path.isdir(version_dir):
                continue
            entries = sorted(os.listdir(version_dir))
            return os.path.join(version_dir, entries[0]) if len(entries) == 1 else version_dir
        if os.path.exists(model_name):
            return model_name
        wanted = f"{model_name}:{version}" if version is not None else model_name
        raise ModelNotFoundException(
            f"Model {wanted} not found in {', '.join(roots)} or in current working directory {os.getcwd()}; "
            "check the model name and version passed to Model.get_model_path against the deployed models"
        )
