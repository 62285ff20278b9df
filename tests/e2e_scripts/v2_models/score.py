import numpy as np


def init():
    pass


def run(raw_data):
    return raw_data


def infer(inputs, model_name=None):
    """A multi-model service's V2 calls: /v2/models/<service>.<model>/infer names the model."""
    return {"model": np.array([model_name or "-"], dtype=object), "x": inputs["x"]}
