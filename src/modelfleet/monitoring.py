"""``from modelfleet.monitoring import ModelDataCollector``: v1's ``azureml.monitoring`` under
modelfleet's name (see ``modelfleet.telemetry.collect`` for what it records and where)."""

from modelfleet.telemetry.collect import ModelDataCollector

__all__ = ["ModelDataCollector"]
