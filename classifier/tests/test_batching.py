"""The micro-batcher on its own, with stand-in predict functions (pure unit tests)."""

import threading
import time

import numpy as np
import pytest

from classifier.batching import (
    BatchFailed,
    BatchResult,
    MicroBatcher,
    QueueFull,
    QueueTimeout,
    ShuttingDown,
)

from .helpers import wait_until


def rows(*values: float) -> np.ndarray:
    """A tiny stand-in input: one row per value."""
    return np.array(values, dtype=np.float32).reshape(-1, 1)


def echo(batch: np.ndarray) -> np.ndarray:
    return batch * 10


class SlowModel:
    """Records batch sizes; each forward pass takes `seconds`."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds
        self.sizes: list[int] = []

    def __call__(self, batch):
        self.sizes.append(len(batch))
        time.sleep(self.seconds)
        return batch * 10


def submit_concurrently(batcher: MicroBatcher, inputs: list[np.ndarray]):
    results: list = [None] * len(inputs)

    def worker(i):
        try:
            results[i] = batcher.submit(inputs[i])
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


def submit_staggered(batcher: MicroBatcher, count: int, spacing: float) -> None:
    """`count` one-row requests from their own threads, `spacing` seconds apart; waits."""

    def staggered(i):
        time.sleep(spacing * i)
        batcher.submit(rows(i))

    threads = [threading.Thread(target=staggered, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)


def test_concurrent_requests_share_forward_passes_and_get_their_own_rows():
    model = SlowModel()
    batcher = MicroBatcher(model, max_batch=32)
    inputs = [rows(i, i + 0.5) for i in range(12)]
    results = submit_concurrently(batcher, inputs)
    for i, result in enumerate(results):
        np.testing.assert_allclose(result.probabilities, rows(i, i + 0.5) * 10)
    assert sum(model.sizes) == 24
    assert len(model.sizes) < 12, "requests that waited together must share a forward pass"
    assert max(model.sizes) > 2
    assert batcher.stats.mean_batch > 2
    batcher.close()


def test_a_batch_never_exceeds_max_batch():
    model = SlowModel()
    batcher = MicroBatcher(model, max_batch=4, max_queue=100)
    results = submit_concurrently(batcher, [rows(i) for i in range(20)])
    assert all(not isinstance(r, Exception) for r in results)
    assert max(model.sizes) <= 4
    batcher.close()


def test_the_time_spent_in_forward_passes_is_counted_failed_ones_too():
    calls = []

    def slow_then_failing(batch):
        calls.append(len(batch))
        time.sleep(0.05)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return batch * 10

    batcher = MicroBatcher(slow_then_failing)
    started = time.monotonic()
    batcher.submit(rows(1))
    batcher.submit(rows(2, 3))
    with pytest.raises(BatchFailed):
        batcher.submit(rows(4))
    elapsed = time.monotonic() - started
    # Three passes of 50 ms each, within the wall time they took.
    assert 0.15 <= batcher.stats.pass_seconds <= elapsed
    batcher.close()


def test_a_lone_request_runs_at_once_even_with_a_batch_wait():
    batcher = MicroBatcher(echo, max_wait_ms=500)
    started = time.monotonic()
    result = batcher.submit(rows(1))
    assert time.monotonic() - started < 0.25
    assert result.batch_size == 1
    assert result.queued_ms < 250
    batcher.close()


def test_a_full_queue_is_refused_at_once():
    running, gate = threading.Event(), threading.Event()

    def blocked(batch):
        running.set()
        gate.wait(10)
        return batch

    batcher = MicroBatcher(blocked, max_batch=1, max_queue=2)
    first = threading.Thread(target=submit_concurrently, args=(batcher, [rows(0)]))
    first.start()
    assert running.wait(5)  # it runs, blocked on the gate: the queue is empty again
    queued = threading.Thread(target=submit_concurrently, args=(batcher, [rows(1)] * 2))
    queued.start()  # two wait: the queue is full
    wait_until(lambda: batcher.queued_images == 2, what="two queued requests")
    started = time.monotonic()
    with pytest.raises(QueueFull):
        batcher.submit(rows(9))
    assert time.monotonic() - started < 0.1
    assert batcher.stats.rejected_full == 1
    gate.set()
    first.join(5)
    queued.join(5)
    batcher.close()


def test_a_request_that_waited_too_long_is_refused():
    batcher = MicroBatcher(SlowModel(0.3), max_batch=1, queue_timeout_s=0.1)
    outcomes = submit_concurrently(batcher, [rows(1), rows(2)])
    assert sum(isinstance(o, QueueTimeout) for o in outcomes) == 1
    assert sum(isinstance(o, BatchResult) for o in outcomes) == 1
    assert batcher.stats.rejected_timeout == 1
    batcher.close()


def test_a_failing_batch_fails_only_its_requests_and_the_thread_goes_on():
    calls = []

    def flaky(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return batch * 10

    batcher = MicroBatcher(flaky)
    with pytest.raises(BatchFailed, match="RuntimeError"):
        batcher.submit(rows(1))
    np.testing.assert_allclose(batcher.submit(rows(2)).probabilities, rows(20))
    assert batcher.stats.failed_batches == 1
    batcher.close()


def test_close_finishes_queued_work_then_refuses_new_work():
    model = SlowModel(0.05)
    batcher = MicroBatcher(model, max_batch=1)
    results: list = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(batcher.submit(rows(i))))
        for i in range(4)
    ]
    for t in threads:
        t.start()
    # All four submitted (queued, or one in its pass) before the close.
    deadline = time.monotonic() + 10
    while len(model.sizes) + batcher.queued_images < 4:
        assert time.monotonic() < deadline, "the requests never reached the batcher"
        time.sleep(0.001)
    batcher.close()
    for t in threads:
        t.join(5)
    assert len(results) == 4
    with pytest.raises(ShuttingDown):
        batcher.submit(rows(1))


@pytest.mark.timeout(20)
def test_close_still_answers_a_request_admitted_before_it():
    # A stopping worker closes the batcher while a request may still be decoding: it was
    # admitted, so it gets its answer, not a minute's wait and a 503.
    batcher = MicroBatcher(echo, queue_timeout_s=0.5)
    with batcher.incoming() as ticket:
        batcher.close(timeout=0.1)  # the thread must wait for the admitted request
        started = time.monotonic()
        result = batcher.submit(rows(1), ticket)
    assert time.monotonic() - started < 1.0
    np.testing.assert_allclose(result.probabilities, rows(10))
    with pytest.raises(ShuttingDown):
        batcher.submit(rows(2))


def test_a_request_that_withdraws_does_not_hold_up_a_batch():
    model = SlowModel(0.01)
    batcher = MicroBatcher(model, max_wait_ms=2000)
    with batcher.incoming():
        pass  # decoding failed: never submits
    started = time.monotonic()
    with batcher.incoming() as ticket:
        batcher.submit(rows(1), ticket)
    assert time.monotonic() - started < 1.0
    batcher.close()


def test_under_load_a_forming_batch_waits_briefly_for_the_clients_it_expects():
    model = SlowModel(0.05)
    batcher = MicroBatcher(model, max_wait_ms=400)
    batcher.submit(rows(0, 1, 2, 3))  # the load so far: batches of 4
    assert model.sizes == [4]
    model.sizes.clear()

    submit_staggered(batcher, 4, 0.03)
    assert max(model.sizes) >= 3, f"arrivals 30 ms apart should share a pass: {model.sizes}"
    batcher.close()


@pytest.mark.parametrize(("gap_ms", "waits"), [(None, True), (30, False)])
def test_after_the_load_drops_a_lone_request_waits_only_for_arrivals(gap_ms, waits):
    model = SlowModel(0.01)
    batcher = MicroBatcher(model, max_wait_ms=1000, arrival_gap_ms=gap_ms)
    batcher.submit(rows(0, 1, 2, 3))  # the load so far: batches of 4
    started = time.monotonic()
    batcher.submit(rows(4))  # then nobody else comes
    took = time.monotonic() - started
    assert model.sizes == [4, 1]
    if waits:
        assert took >= 1.0, "without an arrival gap it waits the whole batch wait"
    else:
        assert took < 0.5, f"no arrival for 30 ms: it should have run, took {took:.2f} s"
    batcher.close()


def test_requests_that_keep_arriving_keep_a_batch_forming_within_the_arrival_gap():
    model = SlowModel(0.05)
    batcher = MicroBatcher(model, max_wait_ms=2000, arrival_gap_ms=100)
    batcher.submit(rows(0, 1, 2, 3))
    model.sizes.clear()

    submit_staggered(batcher, 4, 0.06)  # each within the gap, all four beyond it
    assert max(model.sizes) >= 3, f"arrivals 60 ms apart should share a pass: {model.sizes}"
    batcher.close()


def test_a_forming_batch_waits_past_the_gap_for_a_request_still_decoding():
    model = SlowModel(0.01)
    batcher = MicroBatcher(model, max_wait_ms=2000, arrival_gap_ms=20)
    batcher.submit(rows(0, 1))  # the load so far: batches of 2
    model.sizes.clear()
    decoded = threading.Event()

    def slow_decoder():
        with batcher.incoming() as ticket:
            decoded.wait(5)  # a large photo: decoding takes longer than the gap
            batcher.submit(rows(2), ticket)

    decoding = threading.Thread(target=slow_decoder)
    decoding.start()
    wait_until(lambda: batcher._incoming == 1, what="the admitted request")
    first = threading.Thread(target=batcher.submit, args=(rows(3),))
    first.start()
    time.sleep(0.1)  # five gaps: it would have run alone
    decoded.set()
    first.join(5)
    decoding.join(5)
    assert model.sizes == [2], f"the decoding request should share the pass: {model.sizes}"
    batcher.close()


def test_the_gap_counts_from_when_the_last_pass_s_requests_are_done_with():
    # A pass's requests finish one after another (ranking, history), 30 ms apart: more
    # than the arrival gap between two of their clients coming back, but none between a
    # request finishing and its client's next one. Each round must be one batch again.
    model = SlowModel(0.01)
    batcher = MicroBatcher(model, max_wait_ms=3000, arrival_gap_ms=20)
    clients, rounds = 4, 3
    answered = threading.Barrier(clients)

    def client(number: int) -> None:
        for _ in range(rounds):
            with batcher.incoming() as ticket:
                batcher.submit(rows(number), ticket)
                answered.wait(5)
                time.sleep(0.03 * (number + 1))  # its history row: finishes staggered
            # ...and the client is straight back with its next request.

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    # The first round meets an idle server: its first request runs at once.
    assert model.sizes[-(rounds - 1) :] == [clients] * (rounds - 1), model.sizes
    batcher.close()


def test_a_lone_request_after_a_quiet_spell_runs_at_once():
    # The last pass had 4 images, but nothing came for longer than the arrival gap: those
    # clients are gone, and the next lone request must not wait a gap for them.
    model = SlowModel(0.01)
    batcher = MicroBatcher(model, max_wait_ms=2000, arrival_gap_ms=300)
    batcher.submit(rows(0, 1, 2, 3))
    time.sleep(0.4)
    started = time.monotonic()
    batcher.submit(rows(4))
    assert time.monotonic() - started < 0.2, "it waited for clients that had left"
    assert model.sizes == [4, 1]
    batcher.close()


def test_a_burst_already_in_the_request_threads_forms_one_batch():
    # After lone requests (expected load 1), three uploads arrive at once: the first one
    # decoded must not run alone while the front has the other two in request threads.
    model = SlowModel(0.01)
    in_threads = [0]
    batcher = MicroBatcher(
        model, max_wait_ms=2000, arrival_gap_ms=100, requests_coming=lambda: in_threads[0]
    )
    batcher.submit(rows(0))  # the load so far: one at a time
    model.sizes.clear()
    in_threads[0] = 3

    def later(value: float) -> None:
        time.sleep(0.03)  # still being parsed when the first is queued
        with batcher.incoming() as ticket:
            batcher.submit(rows(value), ticket)

    others = [threading.Thread(target=later, args=(v,)) for v in (2, 3)]
    for thread in others:
        thread.start()
    batcher.submit(rows(1))
    for thread in others:
        thread.join(5)
    assert model.sizes == [3]
    batcher.close()


def test_each_pass_is_reported_with_its_requests_tags_and_times():
    reports = []
    gate = threading.Event()

    def predict(batch):
        gate.wait(5)
        time.sleep(0.2)
        return batch * 10

    def on_batch(*report):
        reports.append(report)

    batcher = MicroBatcher(predict, max_batch=8, on_batch=on_batch)
    try:
        first = threading.Thread(target=batcher.submit, args=(rows(1),), kwargs={"tag": "a"})
        first.start()
        wait_until(lambda: batcher.queued_images == 0, what="the first pass to start")
        # Two requests queue behind the running pass, then share the next one.
        others = [
            threading.Thread(target=batcher.submit, args=(rows(2, 3),), kwargs={"tag": tag})
            for tag in ("a", "b")
        ]
        for thread in others:
            thread.start()
        wait_until(lambda: batcher.queued_images == 4, what="both requests queued")
        gate.set()
        for thread in (first, *others):
            thread.join(5)
    finally:
        batcher.close()
    assert [size for _, size, *_ in reports] == [1, 4]
    assert [sorted(tags) for tags, *_ in reports] == [["a"], ["a", "b"]]
    for _, _, join_s, pass_s, split_s in reports:
        assert pass_s >= 0.2
        assert 0 <= join_s < pass_s
        assert 0 <= split_s < pass_s


def test_a_failing_report_never_stops_the_inference_thread():
    def on_batch(*report):
        raise RuntimeError("statistics broke")

    batcher = MicroBatcher(echo, on_batch=on_batch)
    try:
        for value in (1.0, 2.0):
            assert batcher.submit(rows(value)).probabilities[0, 0] == value * 10
    finally:
        batcher.close()
