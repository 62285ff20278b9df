import json


def init():
    print("printing: init done")


def run(raw_data):
    data = json.loads(raw_data)
    print(f"printing: run() got i={data['i']}")
    if data.get("fail"):
        raise ValueError(f"run() was told to fail at i={data['i']}")
    return {"ok": data["i"]}
