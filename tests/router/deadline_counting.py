"""Entry script for tests/router/test_deadlines.py: run() takes 0.3 s and appends one line per
run to $COUNT_FILE (the header x-request-timeout-ms it was given, or "-"), so the test counts
the runs the replica itself saw."""

import os
import time


def init():
    pass


def run(data, request_headers):
    with open(os.environ["COUNT_FILE"], "a") as f:
        f.write(f"{request_headers.get('X-Request-Timeout-Ms', '-')}\n")
    time.sleep(0.3)
    return "done"
