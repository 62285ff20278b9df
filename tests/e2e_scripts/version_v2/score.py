import json
import time


def init():
    pass


def run(raw_data):
    delay = json.loads(raw_data).get("sleep", 0.05)
    time.sleep(delay)
    return {"version": 2}
