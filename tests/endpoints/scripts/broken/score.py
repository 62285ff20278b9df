"""init() fails: a version whose every replica fails, so nothing of it is ever Ready."""


def init():
    raise RuntimeError("this version cannot start")


def run(raw_data):
    return "never"
