import json
import os

from azureml.core.model import Model


def init():
    global weights
    weights = {}
    for name in ("alpha", "beta"):
        path = Model.get_model_path(name)
        with open(path) as f:
            weights[name] = json.load(f)["weight"]


def run(raw_data):
    return {
        "model_dir": os.path.basename(os.environ["AZUREML_MODEL_DIR"]),
        "weights": weights,
        "alpha_path": Model.get_model_path("alpha"),
    }
