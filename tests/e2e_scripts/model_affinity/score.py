"""Routed by model (issue 16): loads the model the router was told about (x-ms-model, or the
URL /models/<model>/score, which the router sends on as that header) and says which replica
(its pid) served and whether the model was loaded there already."""

import json
import os
import time

from modelfleet.replica import models


def init():
    models.set_loader(lambda folder: json.loads(next(folder.glob("*.json")).read_text()))


def run(raw_data, request_headers):
    body = json.loads(raw_data) if raw_data else {}
    name = request_headers.get("X-Ms-Model") or body["model"]
    version = request_headers.get("X-Ms-Model-Version")
    before = models.info()["loaded"]
    model = models.load(name, int(version) if version else None)
    time.sleep(body.get("hold", 0))  # keeps the replica's slot, so concurrent requests overlap
    return {"pid": os.getpid(), "model": name, "hit": any(e.startswith(name + ":") for e in before), "w": model["w"]}
