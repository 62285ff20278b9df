"""Observability: counters, metrics, logs, request timings and model data collection.

``from modelfleet.telemetry import ModelDataCollector`` is v1's ``azureml.monitoring``
collector under modelfleet's name (``collect.py``); it is loaded on first use, so the router,
which imports ``telemetry.counters`` on its hot path, never loads the collector.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ModelDataCollector"]


def __getattr__(name: str) -> Any:
    if name == "ModelDataCollector":
        from modelfleet.telemetry.collect import ModelDataCollector

        return ModelDataCollector
    raise AttributeError(f"module 'modelfleet.telemetry' has no attribute {name!r}")
