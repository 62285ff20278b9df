"""Counts how many run() calls are in progress at once in this replica process.

Body ``{"sleep": seconds}``; answers ``{"pid", "max", "calls"}``: this process's id, the most
run() calls ever seen at the same time in it, and how many calls it has had.
"""

import json
import os
import threading
import time


def init():
    global lock, running, most, calls
    lock = threading.Lock()
    running = most = calls = 0


def run(raw_data):
    global running, most, calls
    with lock:
        running += 1
        calls += 1
        most = max(most, running)
    try:
        time.sleep(float(json.loads(raw_data).get("sleep", 0)))
    finally:
        with lock:
            running -= 1
    return {"pid": os.getpid(), "max": most, "calls": calls}
