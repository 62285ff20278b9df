"""``azureml.contrib.services.aml_request`` as the replica provides it: ``rawhttp`` and ``AMLRequest``."""

from modelfleet.replica.compat import rawhttp
from modelfleet.replica.rawrequest import AMLRequest

__all__ = ["AMLRequest", "rawhttp"]
