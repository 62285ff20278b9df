"""modelfleet's stand-in for ``azureml.monitoring``: ``ModelDataCollector`` (accepts calls, stores nothing yet)."""

from modelfleet.replica.compat import ModelDataCollector

__all__ = ["ModelDataCollector"]
