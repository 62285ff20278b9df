"""@rawhttp: run() answers with a werkzeug (Flask) Response over a generator, as Flask apps stream."""

import time

from azureml.contrib.services.aml_request import rawhttp
from werkzeug.wrappers import Response


def init():
    pass


@rawhttp
def run(request):
    n = int(request.args.get("n", "3"))
    gap = float(request.args.get("gap", "0"))

    def chunks():
        for i in range(n):
            if i:
                time.sleep(gap)
            yield f"chunk {i} at {time.time():.3f}\n"

    return Response(chunks(), status=207, mimetype="text/event-stream")
