"""modelfleet: deploy models as autoscaled, authenticated web services.

The public SDK names are re-exported lazily (PEP 562) so that importing
``modelfleet.router`` or ``modelfleet.replica`` never loads the SDK and its
dependencies (SQLAlchemy above all) into the data-path processes.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Workspace": "modelfleet.sdk.workspace",
    "Model": "modelfleet.sdk.model",
    "Environment": "modelfleet.sdk.environment",
    "InferenceConfig": "modelfleet.sdk.environment",
    "CondaDependencies": "modelfleet.sdk.conda_dependencies",
    "Webservice": "modelfleet.sdk.webservice",
    "AksWebservice": "modelfleet.sdk.webservice",
    "AksEndpoint": "modelfleet.sdk.webservice",
    "LocalWebservice": "modelfleet.sdk.webservice",
    "KubernetesCompute": "modelfleet.sdk.compute",
    "AksCompute": "modelfleet.sdk.compute",
    "ComputeTarget": "modelfleet.sdk.compute",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'modelfleet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
