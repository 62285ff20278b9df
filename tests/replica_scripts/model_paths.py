"""Resolves models with the v1 API: body "name" or "name:version" -> Model.get_model_path(...)."""

import os

from azureml.core.model import Model
from azureml.monitoring import ModelDataCollector

collector = None


def init():
    global collector
    collector = ModelDataCollector("first", designation="inputs", feature_names=["a"])


def run(raw_data):
    name, _, version = raw_data.partition(":")
    path = Model.get_model_path(name, int(version) if version else None)
    collector.collect([[1]])
    return {"path": path, "model_dir": os.environ.get("AZUREML_MODEL_DIR")}
