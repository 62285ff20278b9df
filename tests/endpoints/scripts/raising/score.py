"""Starts fine, then every run() raises: a version whose every answer is a 500."""


def init():
    pass


def run(raw_data):
    raise RuntimeError("this version is broken")
