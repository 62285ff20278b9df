"""Sibling module of app_src/score.py."""


def double(value):
    return 2 * value
