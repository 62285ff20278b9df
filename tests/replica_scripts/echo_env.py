"""run() reports the header names it was given and whether the router's secret reached it."""

import os


def init():
    pass


def run(data, request_headers):
    return {
        "headers": sorted(name.lower() for name in request_headers),
        "secret_in_environment": "MODELFLEET_REPLICA_SECRET" in os.environ,
    }
