"""The demo's entry script (examples/demo/score.py) with dynamic batching: ``run_batch`` predicts
the rows of every request of a batch in one call and hands each request its own rows' answers.

Deploy it with batching on (README, "Dynamic batching"):

    config = AksWebservice.deploy_configuration(max_batch_size=32, max_batch_delay_ms=5)
    Model.deploy(ws, "diabetes-batched", [model], InferenceConfig(entry_script="score.py",
                 source_directory="examples/batching"), config)

Each item is the request body as text, as run(raw_data) gets it. A request whose body is not
the expected JSON gets its own 500 (an exception object in its place); the others are answered.
"""

import json
import os

import joblib
import numpy as np

model = None


def init():
    global model
    model = joblib.load(os.path.join(os.getenv("AZUREML_MODEL_DIR"), "model.pkl"))


def run(raw_data):
    return model.predict(np.array(json.loads(raw_data)["data"])).tolist()


def run_batch(items):
    parsed = []
    for item in items:
        try:
            rows = np.array(json.loads(item)["data"], dtype=float)
            if rows.ndim != 2:
                raise ValueError(f"data must be a list of rows (got {rows.ndim} dimensions)")
            parsed.append(rows)
        except (ValueError, KeyError, TypeError) as ex:
            parsed.append(ex)  # fails only this request
    good = [rows for rows in parsed if not isinstance(rows, Exception)]
    predictions = model.predict(np.concatenate(good)).tolist() if good else []
    answers, start = [], 0
    for rows in parsed:
        if isinstance(rows, Exception):
            answers.append(rows)
        else:
            answers.append(predictions[start : start + len(rows)])
            start += len(rows)
    return answers
