"""Answers with the pod that served the request (the kubelet sets HOSTNAME to the pod's name)."""

import os


def init():
    pass


def run(raw_data):
    return {"pod": os.environ.get("HOSTNAME")}
