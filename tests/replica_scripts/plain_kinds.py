"""A plain run(raw_data) whose answer depends on the input, to see how results are encoded."""

import json


def init():
    pass


def run(raw_data):
    if raw_data == "boom":
        raise ValueError("the secret detail that must not reach the client")
    if raw_data == "dumps":
        return json.dumps({"result": [1, 2, 3]})  # v1 servers encode this string a second time
    if raw_data == "set":
        return {1, 2, 3}  # not JSON-serialisable
    if raw_data == "none":
        return None
    if raw_data == "text":
        return "plain text"
    if raw_data.startswith("len:"):
        return len(raw_data)
    return {"raw": raw_data, "length": len(raw_data)}
