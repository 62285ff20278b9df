"""A hostile score.py: it tries to reach another service's replica around the router.

Given another replica's pid and socket, it tries to read that replica's environment (where
its secret was passed) and to score it directly, with a secret it was handed and without.
It answers what happened: a status code, or the name of the error that stopped it."""

import json
import os
import socket


def init():
    pass


def run(raw_data):
    request = json.loads(raw_data)
    outcome = {"uid": os.getuid()}
    try:
        with open(f"/proc/{request['pid']}/environ", "rb") as f:
            outcome["environ"] = "read" if b"MODELFLEET_REPLICA_SECRET=" in f.read() else "no secret in it"
    except OSError as e:
        outcome["environ"] = type(e).__name__
    outcome["with_secret"] = _score(request["socket"], request.get("secret"))
    outcome["without"] = _score(request["socket"], None)
    return outcome


def _score(path, secret):
    body = b'{"data": [[1, 2]]}'
    head = (
        f"POST /score HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    )
    if secret:
        head += f"x-modelfleet-replica-secret: {secret}\r\n"
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(path)
            s.sendall(head.encode() + b"connection: close\r\n\r\n" + body)
            return int(s.recv(65536).split(b" ", 2)[1])
    except OSError as e:
        return type(e).__name__
