"""A v1-style script that collects its own feature rows (designation "features")."""

import json

from azureml.monitoring import ModelDataCollector


def init():
    global features
    features = ModelDataCollector("regressor", designation="features", feature_names=["a", "b"])


def run(raw_data):
    data = json.loads(raw_data)
    if data.get("fail"):
        raise ValueError("told to fail")
    if data.get("say"):
        print(data["say"], flush=True)
    features.collect(data["data"])
    return [sum(row) for row in data["data"]]
