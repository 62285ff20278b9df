"""modelfleet's stand-in for ``azureml.core.model``."""

from modelfleet.replica.compat import Model

__all__ = ["Model"]
