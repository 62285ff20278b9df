"""Says which interpreter runs it and what it can import (for the environment tests)."""

import importlib
import os
import sys


def init():
    pass


def run(raw_data):
    found = {}
    for module in ("mf_tiny_a", "mf_tiny_b", "mf_tiny_c", "mf_tiny_d", "sqlalchemy", "modelfleet.sdk"):
        try:
            found[module] = getattr(importlib.import_module(module), "VALUE", True)
        except ImportError:
            found[module] = None
    return {
        "executable": sys.executable,
        "prefix": sys.prefix,
        "greeting": os.environ.get("GREETING"),
        "modules": found,
    }
