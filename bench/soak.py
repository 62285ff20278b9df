"""Soak: mixed traffic through the router for a bounded time, with autoscaling on, a key
regenerated and the service updated midway; then every answer is checked and the daemon's
and replicas' memory and open files compared with their values at the start.

    python bench/soak.py [--duration 300] [--workers 6] [--json FILE]

The mix (weights per request; each worker picks one at random, keep-alive connections):

- ``valid``    a scoring body → 200 ``[55]``
- ``unauth``   no key, a wrong key, or the primary key from before it was regenerated → 401
- ``unknown``  a service that does not exist → 404
- ``bad``      a body that is not JSON → 400 (the script's own answer, through ``@rawhttp``)
- ``fail``     run() raises → 500
- ``slow``     run() sleeps 0.2 s → 200
- ``large``    a 20 MB body → 200
- ``aborted``  the client sends half a body, or a whole request, and closes without reading

A request that needs a replica may also get 503 (queue wait over ``max_request_wait_time``
while autoscaling catches up): that is the contract's shedding, counted as ``shed`` and
reported, not an error. Anything else — another status, a wrong body, a connection error on
a request that was not aborted on purpose — is an unexpected answer, and the run fails.

Midway: the primary key is regenerated (the old one must then get 401, the new one 200) and
the service is updated (a new generation of replicas; no request may fail during it).

Growth bounds, checked at the end (after the traffic has stopped and in-flight work
drained): the daemon (which runs the router) grows by at most 64 MiB resident and 16 open
files; the largest replica by at most 192 MiB and 16 open files, compared with the largest
replica at the start. A replica takes 2 requests at once here, and a 20 MB body is held about
three times while it is scored (the bytes, the text, the parsed value): two at once is
~120 MiB that the allocator keeps for the next one; a leak would pass that bound over a run.

Traffic goes only to 127.0.0.1; the run is bounded by ``--duration``; the cluster started here
is stopped at the end, and its processes are checked gone by pid.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from _common import alive, cpu_model, kill_pids, wait_gone
from modelfleet import AksWebservice, Environment, InferenceConfig, Model, Webservice, Workspace

HERE = Path(__file__).resolve().parent
VALID = json.dumps({"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]}).encode()
LARGE = b'{"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]], "pad": "' + b"x" * (20 * 1024 * 1024) + b'"}'
KINDS = {"valid": 50, "unauth": 12, "unknown": 4, "bad": 8, "fail": 8, "slow": 8, "large": 0.5, "aborted": 5}
NEEDS_REPLICA = {"valid", "bad", "fail", "slow", "large"}
EXPECTED = {"valid": 200, "unauth": 401, "unknown": 404, "bad": 400, "fail": 500, "slow": 200, "large": 200}
DAEMON_RSS_BOUND, DAEMON_FD_BOUND = 64 * 2**20, 16
REPLICA_RSS_BOUND, REPLICA_FD_BOUND = 192 * 2**20, 16


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    unexpected: list[str] = field(default_factory=list)
    slowest_s: float = 0.0

    def add(self, kind: str, outcome: str, took_s: float, problem: str | None = None) -> None:
        with self.lock:
            self.counts[f"{kind} {outcome}"] += 1
            self.slowest_s = max(self.slowest_s, took_s)
            if problem is not None and len(self.unexpected) < 50:
                self.unexpected.append(problem)


@dataclass
class Shared:
    """What the workers read and the conductor changes midway."""

    uri: str
    unknown_uri: str
    secondary: str
    stale_primary: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)


def resources(pid: int) -> tuple[int, int]:
    """(resident bytes, open file descriptors) of ``pid``."""
    rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return rss_pages * os.sysconf("SC_PAGE_SIZE"), len(os.listdir(f"/proc/{pid}/fd"))


def snapshot(ws: Workspace, name: str) -> dict[str, object]:
    info = ws.cluster().info()
    assert info is not None, "the cluster is not running"
    daemon = resources(int(info["pid"]))
    replicas = [resources(r["pid"]) for r in ws.cluster().status()["services"][name]["replicas"] if r.get("pid")]
    return {
        "daemon_rss": daemon[0],
        "daemon_fds": daemon[1],
        "replicas": len(replicas),
        "replica_rss_max": max((r[0] for r in replicas), default=0),
        "replica_fds_max": max((r[1] for r in replicas), default=0),
    }


def aborted(uri: str, half_body: bool) -> None:
    """A client that goes away: half a body then close, or a whole request and close unread."""
    parts = urlsplit(uri)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        head = f"POST {parts.path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        if half_body:
            sock.sendall(f"{head}Content-Length: {len(VALID) * 2}\r\n\r\n".encode() + VALID)
        else:
            sock.sendall(f"{head}Content-Length: {len(VALID)}\r\n\r\n".encode() + VALID)


def one_request(client: httpx.Client, shared: Shared, kind: str, rng: random.Random) -> tuple[int, bytes]:
    auth = {"Authorization": f"Bearer {shared.secondary}", "Content-Type": "application/json"}
    if kind == "unauth":
        choice = rng.choice(["none", "wrong", "stale"])
        if choice == "none":
            auth.pop("Authorization")
        elif choice == "wrong" or shared.stale_primary is None:
            auth["Authorization"] = "Bearer not-a-key"
        else:
            auth["Authorization"] = f"Bearer {shared.stale_primary}"
    uri = shared.unknown_uri if kind == "unknown" else shared.uri
    body = {
        "bad": b"this is not json",
        "fail": b'{"fail": true}',
        "slow": b'{"sleep": 0.2, "data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]}',
        "large": LARGE,
    }.get(kind, VALID)
    response = client.post(uri, content=body, headers=auth)
    return response.status_code, response.content


def worker(shared: Shared, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    names, weights = list(KINDS), list(KINDS.values())
    with httpx.Client(timeout=30) as client:
        while not shared.stop.is_set():
            kind = rng.choices(names, weights)[0]
            started = time.monotonic()
            if kind == "aborted":
                try:
                    aborted(shared.uri, half_body=rng.random() < 0.5)
                    tally.add(kind, "sent", time.monotonic() - started)
                except OSError as exc:
                    tally.add(kind, "error", time.monotonic() - started, f"aborted client could not even send: {exc!r}")
                continue
            try:
                status, content = one_request(client, shared, kind, rng)
            except httpx.HTTPError as exc:
                tally.add(kind, "error", time.monotonic() - started, f"{kind}: {exc!r}")
                continue
            took = time.monotonic() - started
            if status == EXPECTED[kind] and (kind not in ("valid", "slow", "large") or content == b"[55]"):
                tally.add(kind, str(status), took)
            elif status == 503 and kind in NEEDS_REPLICA:
                tally.add(kind, "shed", took)
            else:
                tally.add(kind, str(status), took, f"{kind}: {status} {content[:200]!r}")


def deploy(ws: Workspace, name: str) -> Webservice:
    source = HERE / "soak_service"
    ic = InferenceConfig(entry_script="score.py", source_directory=source, environment=Environment("soak"))
    dc = AksWebservice.deploy_configuration(
        autoscale_enabled=True,
        autoscale_min_replicas=1,
        autoscale_max_replicas=3,
        autoscale_refresh_seconds=1,
        autoscale_down_delay_seconds=10,
        replica_max_concurrent_requests=2,
        max_request_wait_time=2000,
        cpu_cores=0.1,
        memory_gb=0.5,
    )
    service = Model.deploy(ws, name, [], ic, dc, overwrite=True)
    service.wait_for_deployment(timeout_sec=120)
    return service


def conductor(service: Webservice, shared: Shared, duration: float, tally: Tally, events: list[str]) -> None:
    """Midway changes: regenerate the primary key at 1/3, update the service at 1/2."""
    start = time.monotonic()
    time.sleep(duration / 3)
    old_primary = service.get_keys()[0]
    service.regen_key("Primary")
    new_primary = service.get_keys()[0]
    shared.stale_primary = old_primary
    with httpx.Client(timeout=30) as client:
        for key, expected in ((old_primary, 401), (new_primary, 200)):
            status = client.post(shared.uri, content=VALID, headers={"Authorization": f"Bearer {key}"}).status_code
            if status != expected and not (expected == 200 and status == 503):
                tally.add("regen-check", str(status), 0.0, f"after regeneration: key answered {status}, not {expected}")
    events.append(f"{time.monotonic() - start:.1f} s: primary key regenerated")
    time.sleep(max(0.0, duration / 2 - (time.monotonic() - start)))
    service.update(scoring_timeout_ms=59000)
    service.wait_for_deployment(timeout_sec=120)
    events.append(f"{time.monotonic() - start:.1f} s: update rolled out ({service.state})")
    if service.state != "Healthy":
        tally.add("update", service.state, 0.0, f"update ended {service.state}: {service.error}")


def run(duration: float, workers: int) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="mf-soak-"))
    ws = Workspace.create("soak", tmp / "ws")
    name = "soak"
    pids: list[int] = []
    try:
        service = deploy(ws, name)
        info = ws.cluster().info()
        assert info is not None
        pids.append(int(info["pid"]))
        base = service.scoring_uri
        unknown = base.replace(f"/{name}/", "/no-such-service/")
        shared = Shared(uri=base, unknown_uri=unknown, secondary=service.get_keys()[1])
        before = snapshot(ws, name)
        tally, events = Tally(), []
        threads = [threading.Thread(target=worker, args=(shared, tally, seed), daemon=True) for seed in range(workers)]
        started = time.monotonic()
        for t in threads:
            t.start()
        conduct = threading.Thread(target=conductor, args=(service, shared, duration, tally, events), daemon=True)
        conduct.start()
        time.sleep(duration)
        shared.stop.set()
        for t in threads:
            t.join(60)
        conduct.join(180)
        elapsed = time.monotonic() - started
        time.sleep(2)  # in-flight work drains, aborted connections are reaped
        after = snapshot(ws, name)
        for r in ws.cluster().status()["services"][name]["replicas"]:
            if r.get("pid"):
                pids.append(r["pid"])
        growth = {
            "daemon_rss": int(after["daemon_rss"]) - int(before["daemon_rss"]),
            "daemon_fds": int(after["daemon_fds"]) - int(before["daemon_fds"]),
            "replica_rss_max": int(after["replica_rss_max"]) - int(before["replica_rss_max"]),
            "replica_fds_max": int(after["replica_fds_max"]) - int(before["replica_fds_max"]),
        }
        over = [
            f"{what} grew by {growth[what]} (bound {bound})"
            for what, bound in (
                ("daemon_rss", DAEMON_RSS_BOUND),
                ("daemon_fds", DAEMON_FD_BOUND),
                ("replica_rss_max", REPLICA_RSS_BOUND),
                ("replica_fds_max", REPLICA_FD_BOUND),
            )
            if growth[what] > bound
        ]
        total = sum(tally.counts.values())
        return {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} cores, {cpu_model('unknown CPU')}",
            "duration_s": round(elapsed, 1),
            "workers": workers,
            "requests": total,
            "per_second": round(total / elapsed, 1),
            "counts": dict(sorted(tally.counts.items())),
            "unexpected": tally.unexpected,
            "slowest_s": round(tally.slowest_s, 3),
            "events": events,
            "scale_events": service.get_scale_events(),
            "before": before,
            "after": after,
            "growth": growth,
            "over_bounds": over,
        }
    finally:
        with_cluster = ws.cluster().info()
        if with_cluster is not None:
            pids += [int(with_cluster["pid"])]
            for s in ws.cluster().status()["services"].values():
                pids += [r["pid"] for r in s["replicas"] if r.get("pid")]
            ws.cluster().stop()
        wait_gone(pids, timeout=30)
        kill_pids(p for p in pids if alive(p))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of traffic (default 300)")
    parser.add_argument("--workers", type=int, default=6, help="concurrent clients (default 6)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    result = run(args.duration, args.workers)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(f"soak {result['date']} on {result['machine']}: {result['requests']} requests in "
          f"{result['duration_s']} s ({result['per_second']}/s), {args.workers} clients")  # fmt: skip
    for key, count in result["counts"].items():  # type: ignore[union-attr]
        print(f"  {key:<16} {count}")
    for event in result["events"]:  # type: ignore[union-attr]
        print(f"  event: {event}")
    print(f"  scale events: {len(result['scale_events'])}; slowest answer {result['slowest_s']} s")  # type: ignore[arg-type]
    for label in ("before", "after"):
        r = result[label]
        print(f"  {label}: daemon {r['daemon_rss'] / 2**20:.0f} MiB, {r['daemon_fds']} fds; "  # type: ignore[index]
              f"{r['replicas']} replicas, largest {r['replica_rss_max'] / 2**20:.0f} MiB, "  # type: ignore[index]
              f"{r['replica_fds_max']} fds")  # type: ignore[index]  # fmt: skip
    problems = list(result["unexpected"]) + list(result["over_bounds"])  # type: ignore[call-overload]
    for problem in problems:
        print(f"  UNEXPECTED: {problem}", file=sys.stderr)
    print("soak passed" if not problems else f"soak FAILED: {len(problems)} problems")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
