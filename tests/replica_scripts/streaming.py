"""@rawhttp: run() answers with AMLResponse(generator), streamed as it is produced.

Query parameters: ``n`` chunks, ``gap`` seconds between them, ``first`` seconds before the
first, ``size`` pad each chunk to this many bytes, ``fail`` raise before chunk number N,
``marker`` a file the generator's ``finally`` writes (to show that it was closed).
"""

import time

from azureml.contrib.services.aml_request import rawhttp
from azureml.contrib.services.aml_response import AMLResponse


def init():
    pass


@rawhttp
def run(request):
    args = request.args
    n = int(args.get("n", "3"))
    gap = float(args.get("gap", "0"))
    first = float(args.get("first", "0"))
    fail = int(args.get("fail", "-1"))
    size = int(args.get("size", "0"))
    marker = args.get("marker")

    def chunks():
        try:
            time.sleep(first)
            for i in range(n):
                if i == fail:
                    raise RuntimeError(f"the generator failed at chunk {i}")
                if i:
                    time.sleep(gap)
                line = f"chunk {i} at {time.time():.3f}"
                yield line.ljust(size - 1, ".") + "\n"
        finally:
            if marker:
                with open(marker, "w") as f:
                    f.write("closed")

    return AMLResponse(chunks(), 200, {"Content-Type": "text/plain", "X-Stream": "yes"})
