"""The benchmark's trivial model on Ray Serve (one replica), on a one-CPU local Ray.

    python ray_app.py PORT           (POST / with {"data": [[...]]} -> [55]); prints READY

SIGTERM shuts Serve and Ray down; the bench also stops every process left in the tree by pid.
"""

import signal
import sys
import threading

import ray
from ray import serve
from starlette.requests import Request


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class Summer:
    async def __call__(self, request: Request):
        body = await request.json()
        return [sum(row) for row in body["data"]]


if __name__ == "__main__":
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})
    serve.run(Summer.bind(), route_prefix="/")
    print("READY", flush=True)
    stop.wait()
    serve.shutdown()
    ray.shutdown()
