"""modelfleet's stand-in for ``azureml.core``: only ``Model`` (for ``Model.get_model_path``)."""

from modelfleet.replica.compat import Model

__all__ = ["Model"]
