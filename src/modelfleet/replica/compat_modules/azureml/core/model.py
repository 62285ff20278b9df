"""modelfleet's stand-in for ``azureml.core.model``."""

from modelfleet.replica.v1model import Model

__all__ = ["Model"]
