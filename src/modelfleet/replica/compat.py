"""The v1 names entry scripts import, for environments without the azureml packages.

Scripts written for v1 import ``azureml.core.model.Model`` (for ``get_model_path``),
``azureml.contrib.services.aml_request`` (``rawhttp``, ``AMLRequest``),
``azureml.contrib.services.aml_response`` (``AMLResponse``) and ``azureml.monitoring``
(``ModelDataCollector``). ``install()`` makes those imports work:

- ``azureml.contrib.services.aml_request``/``aml_response`` are always ours, placed in
  ``sys.modules`` before the script is imported, as azmlinfsrv does with its own copies: the
  server must understand the request and response types the script uses.
- Everything else under ``azureml.*`` is served by a finder appended at the *end* of
  ``sys.meta_path`` from the files in ``compat_modules/``; an installed azureml-core or
  azureml-monitoring is found first and wins.

The classes live in ``rawrequest`` (AMLRequest), ``rawresponse`` (AMLResponse) and ``v1model``
(Model, the exceptions); the files under ``compat_modules/azureml`` only re-export them.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from modelfleet.replica.entry import RAWHTTP_ATTR
from modelfleet.replica.rawrequest import AMLRequest, FileStorage, Headers, MultiDict
from modelfleet.replica.rawresponse import AMLResponse
from modelfleet.replica.v1model import AzureMLException, Model, ModelNotFoundException, WebserviceException

# azureml.monitoring.ModelDataCollector is the real collector (telemetry/collect.py): it records
# when the service has collect_model_data, and accepts the calls and stores nothing otherwise.
from modelfleet.telemetry.collect import ModelDataCollector  # noqa: F401 - re-exported

COMPAT_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compat_modules")
_FORCED = ("azureml.contrib.services.aml_request", "azureml.contrib.services.aml_response")


class _CompatFinder(importlib.abc.MetaPathFinder):
    """Serves ``azureml.*`` modules from ``COMPAT_ROOT`` when no earlier finder found them."""

    def __init__(self, root: str) -> None:
        self.root = root

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "azureml" and not fullname.startswith("azureml."):
            return None
        base = os.path.join(self.root, *fullname.split("."))
        package_init = os.path.join(base, "__init__.py")
        if os.path.isfile(package_init):
            return importlib.util.spec_from_file_location(fullname, package_init, submodule_search_locations=[base])
        if os.path.isfile(base + ".py"):
            return importlib.util.spec_from_file_location(fullname, base + ".py")
        return None


def install() -> None:
    """Make the v1 imports available (idempotent). Call before importing the entry script."""
    if not any(isinstance(f, _CompatFinder) for f in sys.meta_path):
        sys.meta_path.append(_CompatFinder(COMPAT_ROOT))
    for name in _FORCED:
        if getattr(sys.modules.get(name), "__modelfleet_compat__", False):
            continue
        path = os.path.join(COMPAT_ROOT, *name.split(".")) + ".py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.__modelfleet_compat__ = True  # type: ignore[attr-defined]
        sys.modules[name] = module


def rawhttp(func: Callable[..., Any]) -> Callable[..., Any]:
    """Mark run() to receive the request object (``AMLRequest``) instead of the body text."""
    try:
        setattr(func, RAWHTTP_ATTR, True)
    except (AttributeError, TypeError):
        # Callables that refuse attributes (builtins, some C wrappers) get a thin wrapper.
        inner = func

        def func(*args: Any, **kwargs: Any) -> Any:
            return inner(*args, **kwargs)

        func.__wrapped__ = inner  # type: ignore[attr-defined]
        setattr(func, RAWHTTP_ATTR, True)
    return func


__all__ = [
    "AMLRequest",
    "AMLResponse",
    "AzureMLException",
    "FileStorage",
    "Headers",
    "Model",
    "ModelDataCollector",
    "ModelNotFoundException",
    "MultiDict",
    "WebserviceException",
    "install",
    "rawhttp",
]
