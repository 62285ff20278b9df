"""Tries to change its model file in place, as a careless or hostile script might."""

import json
import os

PATH = ""
OUTCOME: dict[str, str] = {}


def init() -> None:
    global PATH
    PATH = os.path.join(os.environ["AZUREML_MODEL_DIR"], "weights.json")
    for step, action in (("chmod", lambda: os.chmod(PATH, 0o666)), ("write", _write)):
        try:
            action()
            OUTCOME[step] = "done"
        except OSError as exc:
            OUTCOME[step] = type(exc).__name__


def _write() -> None:
    with open(PATH, "r+b") as f:
        f.write(b'{"weight": 666}')


def run(raw_data: str) -> dict[str, object]:
    with open(PATH) as f:
        return {"outcome": OUTCOME, "model": json.load(f), "uid": os.getuid()}
