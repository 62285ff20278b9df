"""init() raises: the server must exit with status 3 and the traceback on stderr."""


def init():
    raise RuntimeError("model file is missing")


def run(raw_data):
    return raw_data
