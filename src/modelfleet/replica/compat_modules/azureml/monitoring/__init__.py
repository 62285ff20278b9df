"""modelfleet's stand-in for ``azureml.monitoring``: ``ModelDataCollector`` (telemetry/collect.py)."""

from modelfleet.telemetry.collect import ModelDataCollector

__all__ = ["ModelDataCollector"]
