"""A V2 script that declares its infer() answers row by row (V2_BATCHED): each call counts
itself, and each row's answer carries its own id, so a test sees that calls were joined and
that every request got back exactly its own rows."""

import os
import threading
import time

import numpy as np

V2_BATCHED = True
calls = 0
_lock = threading.Lock()


def init():
    pass


def run(raw_data):
    return raw_data


def infer(inputs):
    global calls
    with _lock:
        calls += 1
        call = calls
    time.sleep(float(os.environ.get("V2_COST_S", "0")))
    ids = inputs["id"]
    rows = len(ids)
    if os.environ.get("V2_WRONG_ROWS") and rows > 1:
        return {"id": ids[:1], "call": np.array([call])}
    return {"id": ids, "call": np.full(rows, call, dtype=np.int64), "rows": np.full(rows, rows, dtype=np.int64)}
