"""``azureml.contrib.services.aml_request`` as the replica provides it: ``rawhttp`` and ``AMLRequest``."""

from modelfleet.replica.compat import AMLRequest, rawhttp

__all__ = ["AMLRequest", "rawhttp"]
