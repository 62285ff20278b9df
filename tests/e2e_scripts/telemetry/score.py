import json


def init():
    pass


def run(raw_data):
    data = json.loads(raw_data)
    if "say" in data:
        print(data["say"])  # to the replica's log
    if data.get("fail"):
        raise ValueError("run() was told to fail")
    return {"double": 2 * data["i"]}
