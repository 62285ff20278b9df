"""Answers with the name in its model file (one model per endpoint version: which version served)."""

import glob
import json
import os

name = None


def init():
    global name
    files = glob.glob(os.path.join(os.environ["AZUREML_MODEL_DIR"], "**", "*.json"), recursive=True)
    with open(files[0]) as f:
        name = json.load(f)["name"]


def run(raw_data):
    return name
