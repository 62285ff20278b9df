import json
import os


def init():
    global ready_file
    ready_file = os.environ.get("AZUREML_MODEL_DIR")


def run(raw_data):
    data = json.loads(raw_data)["data"]
    return [sum(row) for row in data]
