"""Answers with its model file's contents."""

import json
import os


def init() -> None:
    pass


def run(raw_data: str) -> dict[str, object]:
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "weights.json")) as f:
        return {"model": json.load(f)}
