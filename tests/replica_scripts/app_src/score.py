"""An entry script that imports a sibling module, as v1 source directories do."""

from helper import double


def init():
    pass


def run(raw_data):
    return double(int(raw_data))
