"""Dynamic batching (replica/batching.py) on a real replica process: 64 concurrent callers each
get their own answer from full batches, a lone request waits the delay and no more, an exception
item fails only its request, a raising run_batch fails its batch and the replica goes on, a
wrong-length answer is a clear 500, an expired deadline leaves the item out (504, counted),
admission is --max-concurrent x --max-batch-size, and bad settings are refused by name. The
decisions themselves are tested as functions at the end."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfleet.errors import ConfigError
from modelfleet.replica.batching import BUCKETS, answer_error, bucket_of, deadline_of, due, split_expired
from modelfleet.replica.config import parse_config
from modelfleet.router.autoscale import Counts, ScaleSettings, ScaleState, batch_counts, decide
from replica_scripts.harness import Answer, Server, request, start_replica

SCRIPT = Path(__file__).resolve().parent / "batch_scripts" / "batch_ids.py"


def score(port: int, body: dict[str, object], headers: dict[str, str] | None = None) -> Answer:
    return request(port, "POST", "/score", json.dumps(body), {"Content-Type": "application/json", **(headers or {})})


def start(tmp: Path, *args: str, env: dict[str, str] | None = None) -> tuple[Server, Path]:
    stats = tmp / f"stats-{time.monotonic_ns()}.json"
    server = start_replica(SCRIPT, tmp, args=list(args), env={"MODELFLEET_STATS_FILE": str(stats), **(env or {})})
    return server, stats


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """One call at a time of up to 32 items, each call costing 30 ms."""
    tmp = tmp_path_factory.mktemp("batching")
    server, stats = start(tmp, "--max-batch-size", "32", "--max-batch-delay-ms", "10", env={"BATCH_COST_S": "0.03"})
    try:
        yield server, stats
    finally:
        assert server.stop() == 0


def test_64_concurrent_callers_each_get_their_own_answer_in_batches(loaded: tuple[Server, Path]) -> None:
    server, stats = loaded
    callers, rounds = 64, 4
    answers: dict[str, Answer] = {}
    errors: list[BaseException] = []
    start_line = threading.Barrier(callers)

    def caller(n: int) -> None:
        try:
            start_line.wait(30)
            for r in range(rounds):
                rid = f"c{n}-r{r}"
                answers[rid] = score(server.port, {"id": rid})  # type: ignore[arg-type]
        except BaseException as ex:  # noqa: BLE001 - reported below
            errors.append(ex)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert len(answers) == callers * rounds
    sizes = []
    for rid, answer in answers.items():
        assert answer.status == 200, (rid, answer)
        body = json.loads(answer.body)
        assert body["id"] == rid  # its own item, never a neighbour's
        assert int(answer.headers["x-modelfleet-batch-size"]) == body["batch"]
        sizes.append(body["batch"])
    assert sum(sizes) / len(sizes) > 8, sorted(sizes)
    # the replica's own counters (its stats file, written once a second) agree
    deadline = time.monotonic() + 10
    counted: dict[str, object] = {}
    while time.monotonic() < deadline:
        counted = json.loads(stats.read_text()) if stats.exists() else {}
        if counted.get("batch_size_sum", 0) >= callers * rounds:
            break
        time.sleep(0.2)
    assert counted["batch_size_sum"] >= callers * rounds
    mean = counted["batch_size_sum"] / counted["batch_count"]  # type: ignore[operator]
    assert mean > 8
    assert sum(counted["batch_size_buckets"]) == counted["batch_count"]  # type: ignore[arg-type]
    assert counted["batch_calls_limit"] == 1


def test_a_lone_request_waits_the_delay_and_no_more(tmp_path: Path) -> None:
    server, _ = start(tmp_path, "--max-batch-size", "8", "--max-batch-delay-ms", "300")
    try:
        score(server.port, {"id": "warm"})
        started = time.monotonic()
        answer = score(server.port, {"id": "alone"})
        took = time.monotonic() - started
        assert answer.status == 200 and json.loads(answer.body) == {"id": "alone", "batch": 1}
        assert 0.29 <= took < 0.3 + 3.0  # waited for company, then went alone (generous: 2 shared cores)
    finally:
        assert server.stop() == 0


def test_an_exception_item_fails_only_its_request_and_a_raising_batch_fails_all(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    server, _ = start(
        tmp_path, "--max-batch-size", "4", "--max-batch-delay-ms", "500", env={"BATCH_SEEN_FILE": str(seen)}
    )
    try:
        bodies = [{"id": "a"}, {"id": "b", "fail": True}, {"id": "c"}, {"id": "d"}]
        got = together(server.port, bodies)
        assert len(set(seen.read_text().split())) == 4 and all(a.headers["x-modelfleet-batch-size"] == "4" for a in got)
        assert [a.status for a in got] == [200, 500, 200, 200]
        assert json.loads(got[1].body)["message"] == "run_batch() failed for this item: ValueError: item b is bad"
        assert got[1].headers["x-ms-run-function-failed"] == "True"
        assert [json.loads(a.body)["id"] for a in (got[0], got[2], got[3])] == ["a", "c", "d"]

        got = together(server.port, [{"id": "e"}, {"id": "f", "raise": True}, {"id": "g"}, {"id": "h"}])
        assert [a.status for a in got] == [500] * 4
        assert "unexpected error occurred in scoring script" in json.loads(got[0].body)["message"]
        assert "run_batch refused this batch" in server.output()  # the traceback is in the log

        got = together(server.port, [{"id": "i"}, {"id": "j", "short": True}, {"id": "k"}, {"id": "l"}])
        assert [a.status for a in got] == [500] * 4
        assert json.loads(got[0].body)["message"] == (
            "run_batch() returned 3 answers for 4 items; it must return one answer per item, in order"
        )
        # and the replica keeps serving
        answer = score(server.port, {"id": "after"})
        assert answer.status == 200 and json.loads(answer.body)["id"] == "after"
    finally:
        assert server.stop() == 0


def together(port: int, bodies: list[dict[str, object]]) -> list[Answer]:
    """Send each body on its own connection at once; the answers in the same order."""
    out: list[Answer | None] = [None] * len(bodies)

    def send(i: int) -> None:
        out[i] = score(port, bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(a is not None for a in out)
    return out  # type: ignore[return-value]


def test_the_batching_example_answers_each_request_with_its_own_rows(tmp_path: Path) -> None:
    import sys

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "examples" / "demo"))
    try:
        from train import train  # the demo's Ridge regression on the diabetes data
    finally:
        sys.path.pop(0)
    train(tmp_path / "model")
    server = start_replica(
        root / "examples" / "batching" / "score.py",
        tmp_path,
        args=["--model_dir", str(tmp_path / "model"), "--max-batch-size", "3", "--max-batch-delay-ms", "1000"],
    )
    try:
        one, two = [[0.01] * 10], [[0.02] * 10, [-0.03] * 10]
        bodies: list[dict[str, object]] = [{"data": one}, {"rows": "none"}, {"data": two}]
        got = together(server.port, bodies)
        assert [a.status for a in got] == [200, 500, 200]
        assert all(a.headers["x-modelfleet-batch-size"] == "3" for a in got)
        assert "KeyError" in json.loads(got[1].body)["message"]
        unbatched = start_replica(
            root / "examples" / "batching" / "score.py", tmp_path, args=["--model_dir", str(tmp_path / "model")]
        )
        try:
            for answer, body in ((got[0], bodies[0]), (got[2], bodies[2])):
                alone = score(unbatched.port, body)
                assert json.loads(answer.body) == pytest.approx(json.loads(alone.body))  # run() per request
                assert len(json.loads(answer.body)) == len(body["data"])  # type: ignore[arg-type]
        finally:
            assert unbatched.stop() == 0
    finally:
        assert server.stop() == 0


def test_an_item_whose_deadline_passed_before_its_batch_formed_is_left_out(tmp_path: Path) -> None:
    seen, release = tmp_path / "seen", tmp_path / "release"
    server, stats = start(
        tmp_path, "--max-batch-size", "4", "--max-batch-delay-ms", "0", env={"BATCH_SEEN_FILE": str(seen)}
    )
    try:
        held: list[Answer] = []
        holder = threading.Thread(target=lambda: held.append(score(server.port, {"id": "slow", "hold": str(release)})))
        holder.start()
        wait_for(lambda: seen.exists() and "slow" in seen.read_text())  # the only call is held
        started = time.monotonic()
        late = score(server.port, {"id": "late"}, {"x-request-timeout-ms": "100"})
        # answered at its deadline, while the call is still held (it would be held 30 s)
        assert late.status == 504 and time.monotonic() - started < 10, late
        assert "x-request-timeout-ms" in json.loads(late.body)["message"]
        fine = threading.Thread(
            target=lambda: held.append(score(server.port, {"id": "fine"}, {"x-request-timeout-ms": "60000"}))
        )
        fine.start()
        wait_for(lambda: stats.exists() and json.loads(stats.read_text()).get("batch_waiting") == 1)
        release.touch()
        for t in (holder, fine):
            t.join(30)
        assert [a.status for a in held] == [200, 200]
        assert seen.read_text().split() == ["slow", "fine"]  # run_batch never saw the late item
    finally:
        release.touch()
        assert server.stop() == 0
    assert json.loads(stats.read_text())["batch_deadline_expired"] == 1  # written at the stop


def test_a_batching_replica_admits_max_concurrent_times_max_batch_size(tmp_path: Path) -> None:
    seen, release = tmp_path / "seen", tmp_path / "release"
    server, stats = start(
        tmp_path,
        "--max-concurrent",
        "1",
        "--max-batch-size",
        "3",
        "--max-batch-delay-ms",
        "0",
        env={"BATCH_SEEN_FILE": str(seen)},
    )
    try:
        held: list[Answer] = []
        first = threading.Thread(target=lambda: held.append(score(server.port, {"id": "x0", "hold": str(release)})))
        first.start()
        wait_for(lambda: seen.exists() and "x0" in seen.read_text())  # the one call is held
        queued = [threading.Thread(target=lambda i=i: held.append(score(server.port, {"id": f"x{i}"}))) for i in (1, 2)]
        for t in queued:
            t.start()
        # both admitted and waiting for the call (the stats file says so within about a second)
        wait_for(lambda: stats.exists() and json.loads(stats.read_text()).get("batch_waiting") == 2)
        refused = score(server.port, {"id": "x3"})
        release.touch()
        assert refused.status == 503 and refused.headers["x-modelfleet-busy"] == "1"
        assert "3 of 3 requests admitted" in json.loads(refused.body)["message"]
        for t in (first, *queued):
            t.join(30)
        assert sorted(a.status for a in held) == [200, 200, 200]
        order = seen.read_text().split()
        assert order[0] == "x0" and sorted(order[1:]) == ["x1", "x2"]  # x1 and x2 race each other in
    finally:
        release.touch()
        assert server.stop() == 0


def wait_for(condition: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_batching_without_run_batch_fails_at_load_naming_the_setting(tmp_path: Path) -> None:
    from replica_scripts.harness import SCRIPTS

    server = start_replica(SCRIPTS / "plain_sum.py", tmp_path, args=["--max-batch-size", "8"], wait=False)
    try:
        assert server.proc.wait(60) == 3
        out = server.output()
        assert "does not define run_batch(items), which max_batch_size > 1 needs" in out
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-batch-size", "0"], "max_batch_size must be between 1 and 1024 (got 0)"),
        (["--max-batch-size", "5000"], "max_batch_size must be between 1 and 1024 (got 5000)"),
        (["--max-batch-size", "many"], "max_batch_size must be an integer (got 'many')"),
        (["--max-batch-delay-ms", "-1"], "max_batch_delay_ms must be between 0 and 10000 (got -1)"),
        (["--max-batch-delay-ms", "60000"], "max_batch_delay_ms must be between 0 and 10000 (got 60000)"),
    ],
)
def test_bad_batch_settings_are_refused_by_name(flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(["--entry_script", str(SCRIPT), *flags], {}, "/")
    assert e.value.message == message


def test_batch_settings_come_from_flags_or_the_environment() -> None:
    config = parse_config(["--entry_script", str(SCRIPT)], {}, "/")
    assert (config.max_batch_size, config.max_batch_delay_ms) == (1, 5)
    env = {"MODELFLEET_MAX_BATCH_SIZE": "16", "MODELFLEET_MAX_BATCH_DELAY_MS": "0"}
    config = parse_config(["--entry_script", str(SCRIPT)], env, "/")
    assert (config.max_batch_size, config.max_batch_delay_ms) == (16, 0)
    config = parse_config(["--entry_script", str(SCRIPT), "--max-batch-size", "4"], env, "/")
    assert config.max_batch_size == 4


# ---- the decisions, as functions ------------------------------------------------------------------


def test_due_when_full_or_when_the_oldest_waited_the_delay() -> None:
    assert not due(3, oldest=10.0, now=10.004, max_size=4, delay_s=0.005)
    assert due(4, oldest=10.0, now=10.0, max_size=4, delay_s=0.005)
    assert due(1, oldest=10.0, now=10.005, max_size=4, delay_s=0.005)
    assert due(1, oldest=10.0, now=10.0, max_size=4, delay_s=0.0)


def test_deadlines_count_from_arrival_and_expired_items_are_split_out() -> None:
    assert deadline_of([(b"X-Request-Timeout-Ms", b"250")], 100.0) == 100.25
    assert deadline_of([(b"x-request-timeout-ms", b"soon")], 100.0) is None
    assert deadline_of([(b"x-request-timeout-ms", b"-5")], 100.0) is None
    assert deadline_of([], 100.0) is None
    assert split_expired([None, 5.0, 4.0, 6.0], now=5.0) == ([0, 3], [1, 2])


def test_answer_error_names_the_counts() -> None:
    assert answer_error([1, 2], 2) is None
    assert answer_error((1, 2), 2) is None
    assert answer_error([1], 2) == (
        "run_batch() returned 1 answers for 2 items; it must return one answer per item, in order"
    )
    assert "returned dict, not a list" in (answer_error({"a": 1}, 1) or "")


def test_batch_sizes_fall_in_power_of_two_buckets() -> None:
    assert [bucket_of(n) for n in (1, 2, 3, 8, 9, 1024, 1025)] == [0, 1, 2, 3, 4, 10, len(BUCKETS)]


def test_a_batching_service_is_sampled_in_busy_calls_and_scales_on_them() -> None:
    # replica_max_concurrent_requests 1, max_batch_size 32: the router's limit is 32 per replica
    settings = ScaleSettings(min_replicas=1, max_replicas=10, target=0.7, refresh_s=1.0, down_delay_s=60.0)
    router = Counts(in_flight=5, queued=0, ready=1, current=1, limit=32)
    busy = [{"batch_calls_busy_mean": 1.0, "batch_waiting": 4}]  # its one call never rests
    counts = batch_counts(router, busy, 32)
    assert (counts.in_flight, counts.queued, counts.limit) == (32, 4, 32)  # a busy call counts as a full batch
    state, decision = ScaleState(), None
    for step in range(5):
        decision, state = decide(counts, settings, state, now=step * 0.25)
    assert decision is not None and decision.utilization == pytest.approx(36 / 32)
    assert decision.desired == 2  # ceil(36 / (32 x 0.7))
    # on the router's counts alone (5 requests of 32) the same replica looks 16 % busy
    state = ScaleState()
    for step in range(5):
        decision, state = decide(router, settings, state, now=step * 0.25)
    assert decision.desired == 1 and decision.utilization == pytest.approx(5 / 32)
    # a report missing for a Ready replica, or no batching: the router's counts stand
    assert batch_counts(Counts(5, 0, 2, 2, 32), busy, 32) == Counts(5, 0, 2, 2, 32)
    assert batch_counts(router, busy, 1) == router
    two = [{"batch_calls_busy_mean": 0.5, "batch_waiting": 0}, {"batch_calls_busy_mean": 0.25, "batch_waiting": 2}]
    assert batch_counts(Counts(9, 3, 2, 2, 16), two, 16) == Counts(12, 5, 2, 2, 16)
