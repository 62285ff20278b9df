"""modelfleet's stand-in for the ``azureml`` namespace (used only when no azureml package is installed)."""
