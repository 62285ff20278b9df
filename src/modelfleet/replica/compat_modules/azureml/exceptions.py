"""modelfleet's stand-in for ``azureml.exceptions``."""

from modelfleet.replica.compat import AzureMLException, ModelNotFoundException, WebserviceException

__all__ = ["AzureMLException", "ModelNotFoundException", "WebserviceException"]
