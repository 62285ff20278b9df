"""run_batch over JSON bodies {"id": ..., and optionally "sleep": s, "fail": true, "raise": true,
"short": true, "hold": path}: each answer carries its item's id and the batch's size. The call
sleeps the largest "sleep" of its items (plus BATCH_COST_S, a fixed cost per call). "fail"
answers that item with an exception object, "raise" makes run_batch raise, "short" returns one
answer too few, "hold" waits (30 s at most) until that file exists. With BATCH_SEEN_FILE set,
every id run_batch was given is appended there, one a line."""

import json
import os
import time

COST_S = float(os.environ.get("BATCH_COST_S", "0"))


def init():
    pass


def run(raw_data):
    return run_batch([raw_data])[0]


def run_batch(items):
    bodies = [json.loads(item) for item in items]
    seen = os.environ.get("BATCH_SEEN_FILE")
    if seen:
        with open(seen, "a") as f:
            f.writelines(f"{b['id']}\n" for b in bodies)
    time.sleep(COST_S + max(float(b.get("sleep", 0)) for b in bodies))
    for hold in [b["hold"] for b in bodies if b.get("hold")]:
        deadline = time.monotonic() + 30
        while not os.path.exists(hold) and time.monotonic() < deadline:
            time.sleep(0.01)
    if any(b.get("raise") for b in bodies):
        raise RuntimeError("run_batch refused this batch")
    answers = [
        ValueError(f"item {b['id']} is bad") if b.get("fail") else {"id": b["id"], "batch": len(bodies)} for b in bodies
    ]
    if any(b.get("short") for b in bodies):
        answers = answers[:-1]
    return answers
