"""Models loaded on demand: ``load(name, version)`` with a per-replica LRU of loaded models.

A deployment may hold up to 1,000 models (v1's limit); an entry script need not load them all
in ``init()``. It says once how a model folder becomes a model, then asks by name per request::

    from modelfleet.replica import models

    def init():
        models.set_loader(lambda folder: joblib.load(folder / "model.pkl"))

    def run(data):
        model = models.load(data["model"])          # the highest version laid out
        return model.predict(data["rows"]).tolist()

With several replicas, a client that names the model in the ``x-ms-model`` header (or posts to
``/api/v1/service/<svc>/models/<model>/score``, which the router sends on as ``/score`` with
that header) has its request routed to the replicas that hold the model (router/affinity.py);
the script reads the name with ``def run(data, request_headers)``:
``models.load(request_headers["X-Ms-Model"])``.

The replica keeps the models it loaded, the least recently used dropped first once more than
``model_cache_size`` are held or their sizes add up to more than ``model_cache_memory_gb``
(the deploy settings; unbounded when not given). A model's size is what ``set_loader``'s
``size`` says, by default the bytes of its files on disk: an estimate that is cheap, stable and
known before loading (the memory a loaded model takes is neither). One model larger than the
whole budget is still loaded and kept alone, so a request for it never fails for size.

Threads: ``run()`` may run on several worker threads. Loads of different models proceed at
the same time; two requests for the same model that is not loaded wait for one load.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelfleet.errors import ConfigError

__all__ = ["CACHE_MEMORY_ENV", "CACHE_SIZE_ENV", "ModelCache", "info", "load", "path", "set_loader"]

CACHE_SIZE_ENV = "MODELFLEET_MODEL_CACHE_SIZE"
CACHE_MEMORY_ENV = "MODELFLEET_MODEL_CACHE_MEMORY_BYTES"
MODELS_FOLDER = "azureml-models"

Loader = Callable[[Path], Any]
Sizer = Callable[[Path, Any], int]


def files_size(folder: Path, _model: object = None) -> int:
    """Bytes of the files under ``folder`` (links followed once each, as laid out)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@dataclass
class _Entry:
    model: Any
    size: int


class ModelCache:
    """An LRU of loaded models bounded by a count and a byte budget (None: no bound)."""

    def __init__(
        self,
        root: Path,
        max_models: int | None = None,
        max_bytes: int | None = None,
        loader: Loader | None = None,
        sizer: Sizer = files_size,
    ) -> None:
        if max_models is not None and max_models < 1:
            raise ConfigError(f"model_cache_size must be at least 1 (got {max_models})")
        if max_bytes is not None and max_bytes < 1:
            raise ConfigError(f"model_cache_memory_gb must be greater than 0 (got {max_bytes} bytes)")
        self.root = root
        self.max_models = max_models
        self.max_bytes = max_bytes
        self._loader = loader
        self._sizer = sizer
        self._entries: OrderedDict[tuple[str, int], _Entry] = OrderedDict()
        self._lock = threading.Lock()  # guards _entries, _loading and the counters
        self._loading: dict[tuple[str, int], threading.Lock] = {}
        self.hits = self.misses = self.evictions = 0

    def set_loader(self, loader: Loader, size: Sizer | None = None) -> None:
        if not callable(loader):
            raise ConfigError(f"models.set_loader needs a function of the model's folder (got {loader!r})")
        self._loader = loader
        if size is not None:
            self._sizer = size

    def path(self, name: str, version: int | None = None) -> tuple[Path, int]:
        """The model's folder as laid out for this replica, and its version."""
        base = self.root / name
        if version is None:
            versions = sorted(int(p.name) for p in base.iterdir() if p.name.isdigit()) if base.is_dir() else []
            if not versions:
                raise LookupError(f"model {name!r} is not deployed with this service (looked in {base})")
            version = versions[-1]
        folder = base / str(version)
        if not folder.is_dir():
            raise LookupError(f"model {name}:{version} is not deployed with this service (looked in {folder})")
        return folder, version

    def _hit(self, key: tuple[str, int]) -> _Entry | None:
        """The cached entry, marked most recently used and counted (call with the lock held)."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.hits += 1
        return entry

    def load(self, name: str, version: int | None = None) -> Any:
        """The loaded model, from the cache or by the loader (see the module docstring)."""
        folder, version = self.path(name, version)
        key = (name, version)
        with self._lock:
            entry = self._hit(key)
            if entry is not None:
                return entry.model
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:  # one load per model at a time; the others find it cached
            with self._lock:
                entry = self._hit(key)
                if entry is not None:
                    return entry.model
                self.misses += 1
            loader = self._loader or (lambda f: f)  # no loader: the folder itself
            model = loader(folder)
            size = int(self._sizer(folder, model))
            with self._lock:
                self._entries[key] = _Entry(model, size)
                self._evict()
                self._loading.pop(key, None)
            return model

    def _evict(self) -> None:
        def over() -> bool:
            if self.max_models is not None and len(self._entries) > self.max_models:
                return True
            used = sum(e.size for e in self._entries.values())
            return self.max_bytes is not None and used > self.max_bytes

        # ``keep`` (just loaded) is the newest, so it stays, even alone over the budget
        while len(self._entries) > 1 and over():
            del self._entries[next(iter(self._entries))]
            self.evictions += 1

    def info(self) -> dict[str, Any]:
        with self._lock:
            return {
                "loaded": [f"{n}:{v}" for n, v in self._entries],
                "bytes": sum(e.size for e in self._entries.values()),
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
                "max_models": self.max_models,
                "max_bytes": self.max_bytes,
            }


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number (got {raw!r})") from None


_cache: ModelCache | None = None
_cache_lock = threading.Lock()


def _the_cache() -> ModelCache:
    """This replica's cache, made on first use from its layout and the deploy settings."""
    global _cache
    with _cache_lock:
        if _cache is None:
            app_root = Path(os.environ.get("AML_APP_ROOT") or os.getcwd())
            _cache = ModelCache(app_root / MODELS_FOLDER, _env_int(CACHE_SIZE_ENV), _env_int(CACHE_MEMORY_ENV))
        return _cache


def set_loader(loader: Loader, size: Sizer | None = None) -> None:
    """How a model folder becomes a model (``size(folder, model)``: its bytes for the budget)."""
    _the_cache().set_loader(loader, size)


def load(name: str, version: int | None = None) -> Any:
    """The model ``name`` (``version``, or the highest laid out), loaded once and kept in the LRU."""
    return _the_cache().load(name, version)


def path(name: str, version: int | None = None) -> Path:
    """The folder of model ``name`` as laid out for this replica."""
    return _the_cache().path(name, version)[0]


def info() -> dict[str, Any]:
    """What is loaded and the cache's counters (hits, misses, evictions)."""
    return _the_cache().info()
