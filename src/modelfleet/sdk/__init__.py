"""The v1-shaped SDK: Workspace, Model, Environment, InferenceConfig, Webservice and friends."""
