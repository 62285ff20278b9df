"""The benchmark's trivial model: plain run(raw_data) summing each row."""

import json


def init():
    pass


def run(raw_data):
    data = json.loads(raw_data)["data"]
    return [sum(row) for row in data]
