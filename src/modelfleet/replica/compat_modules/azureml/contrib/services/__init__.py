"""modelfleet's stand-in for ``azureml.contrib.services``."""
