import json
import time


def init():
    pass


def run(raw_data):
    return [sum(row) for row in json.loads(raw_data)["data"]]


def infer(inputs):
    """V2 calls: the tensors by name, named arrays back (replica/v2.py). An input "sleep_s"
    makes it slow, for the deadline tests."""
    if "sleep_s" in inputs:
        time.sleep(float(inputs["sleep_s"][0]))
    return {"doubled": inputs["x"] * 2}
