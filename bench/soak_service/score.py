"""The soak's service: one @rawhttp script whose answer depends on what the client asked for,
so that every status the soak expects is produced by the replica itself, not faked.

Body ``{"data": [[...]]}`` → 200 with the sum; ``{"fail": true}`` → run() raises (500);
``{"sleep": s}`` → 200 after s seconds; text that is not JSON → 400 from the script.
A 20 MB body is an ordinary valid body with padding (``"pad"``) that the script ignores.
"""

import json
import time

from azureml.contrib.services.aml_request import rawhttp
from azureml.contrib.services.aml_response import AMLResponse


def init():
    pass


@rawhttp
def run(request):
    try:
        body = json.loads(request.get_data(as_text=True))
    except ValueError:
        return AMLResponse("body is not JSON", 400)
    if body.get("fail"):
        raise RuntimeError("asked to fail")
    if body.get("sleep"):
        time.sleep(float(body["sleep"]))
    return [sum(row) for row in body.get("data", [[0]])]
