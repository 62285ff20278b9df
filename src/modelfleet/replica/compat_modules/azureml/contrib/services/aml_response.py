"""``azureml.contrib.services.aml_response`` as the replica provides it: ``AMLResponse``."""

from modelfleet.replica.rawresponse import AMLResponse

__all__ = ["AMLResponse"]
