"""modelfleet's stand-in for ``azureml.exceptions``."""

from modelfleet.replica.v1model import AzureMLException, ModelNotFoundException, WebserviceException

__all__ = ["AzureMLException", "ModelNotFoundException", "WebserviceException"]
