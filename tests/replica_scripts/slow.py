"""run() takes as long as the body says: "sleep:SECONDS[:MARKER]" blocks in C, "spin:SECONDS" in
Python. With a MARKER path, run() creates that file when it starts, so a test knows it is running."""

import time
from pathlib import Path


def init():
    pass


def run(raw_data):
    mode, _, rest = raw_data.partition(":")
    seconds, _, marker = rest.partition(":")
    if marker:
        Path(marker).touch()
    end = time.monotonic() + float(seconds or 0)
    if mode == "spin":
        while time.monotonic() < end:
            pass
    else:
        time.sleep(float(seconds or 0))
    return "done"
