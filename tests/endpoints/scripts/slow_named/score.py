"""A mirror that is slow: answers with the name in its model file after 0.5 s."""

import glob
import json
import os
import time

name = None


def init():
    global name
    files = glob.glob(os.path.join(os.environ["AZUREML_MODEL_DIR"], "**", "*.json"), recursive=True)
    with open(files[0]) as f:
        name = json.load(f)["name"]


def run(raw_data):
    time.sleep(0.5)
    return name
