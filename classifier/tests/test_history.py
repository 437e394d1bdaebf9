"""Group commit of the history (history.GroupCommit): with a stand-in transaction, the
requests that come to store while another one writes are written together, each learns
what happened to its own rows, and none waits past its timeout; then through the API
with the real model, what a client sees of it."""

import threading
import time

import pytest
from django.db import DatabaseError, connection
from django.test import Client
from prometheus_client import REGISTRY

from classifier import history
from classifier.history import GroupCommit, StoreTimeout
from classifier.models import Prediction

from . import imagegen
from .helpers import upload, wait_until


class Transactions:
    """Records each transaction's rows; the first one can be held open until `release()`."""

    def __init__(self, *, hold_first: bool = False, fail: set[int] = frozenset()) -> None:
        self.groups: list[list[str]] = []
        self.fail = fail  # transaction numbers (0-based) that raise
        self._gate = threading.Event()
        if not hold_first:
            self._gate.set()
        self.first_started = threading.Event()

    def release(self) -> None:
        self._gate.set()

    def __call__(self, rows, timeout_ms):
        number = len(self.groups)
        self.groups.append(list(rows))
        if number == 0:
            self.first_started.set()
            self._gate.wait(5)
        if number in self.fail:
            raise RuntimeError(f"transaction {number} failed")


def write_in_threads(history: GroupCommit, names: list[str], timeout_ms: float = 5000):
    """Each name written by its own thread; what each got back (None, or the exception)."""
    outcomes: dict[str, object] = {}

    def write(name):
        try:
            history.write([name], timeout_ms)
            outcomes[name] = None
        except Exception as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=write, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    return threads, outcomes


def test_requests_that_wait_while_another_writes_are_written_in_one_transaction():
    transactions = Transactions(hold_first=True)
    history = GroupCommit(transactions)
    first, outcomes = write_in_threads(history, ["first"])
    assert transactions.first_started.wait(5)
    others, more = write_in_threads(history, [f"r{i}" for i in range(8)])
    wait_until(lambda: history.waiting == 8)  # all eight wait for the writer's turn
    transactions.release()
    for thread in first + others:
        thread.join(5)
    outcomes.update(more)
    assert transactions.groups[0] == ["first"]
    assert sorted(transactions.groups[1]) == [f"r{i}" for i in range(8)]
    assert len(transactions.groups) == 2, "the eight waiting requests share one transaction"
    assert all(outcome is None for outcome in outcomes.values()), outcomes


def test_a_failed_transaction_fails_every_request_in_it_and_the_next_one_writes():
    transactions = Transactions(hold_first=True, fail={1})
    history = GroupCommit(transactions)
    first, outcomes = write_in_threads(history, ["first"])
    assert transactions.first_started.wait(5)
    others, failed = write_in_threads(history, ["a", "b", "c"])
    wait_until(lambda: history.waiting == 3)
    transactions.release()
    for thread in first + others:
        thread.join(5)
    assert outcomes == {"first": None}
    assert set(failed) == {"a", "b", "c"}
    assert all(isinstance(error, RuntimeError) for error in failed.values())
    history.write(["after"], 1000)  # the writer is not stuck
    assert transactions.groups[-1] == ["after"]


def test_a_request_that_cannot_get_a_turn_in_time_gives_up_and_is_never_written():
    transactions = Transactions(hold_first=True)
    history = GroupCommit(transactions)
    first, _ = write_in_threads(history, ["first"])
    assert transactions.first_started.wait(5)
    started = time.monotonic()
    with pytest.raises(StoreTimeout):
        history.write(["late"], 100)
    assert time.monotonic() - started < 1
    transactions.release()
    for thread in first:
        thread.join(5)
    history.write(["next"], 1000)
    assert all("late" not in group for group in transactions.groups)
    assert transactions.groups[-1] == ["next"]


def post_in_thread(name: str, seed: int, answers: dict) -> threading.Thread:
    """POST /predict from a thread of its own (named `name`); its JSON goes in `answers`."""

    def post():
        picture = upload(imagegen.jpeg(seed), f"{name}.jpg")
        answers[name] = Client().post("/predict", {"image": picture})

    thread = threading.Thread(target=post, name=name)
    thread.start()
    return thread


def failures() -> float:
    return REGISTRY.get_sample_value("classifier_history_write_failures_total") or 0.0


def test_requests_sharing_a_failed_transaction_each_answer_200_not_stored(
    ready_engine, monkeypatch
):
    gate, groups = threading.Event(), []

    def commit(rows, timeout_ms):
        groups.append(len(rows))
        if len(groups) == 1:
            gate.wait(10)  # the transaction in progress while the others come
            return
        raise DatabaseError("could not extend file: No space left on device")

    writer = GroupCommit(commit)
    monkeypatch.setattr(history, "writer", writer)
    holder = threading.Thread(target=writer.write, args=([], 10_000))
    holder.start()
    wait_until(lambda: groups == [0])
    before, answers = failures(), {}
    threads = [post_in_thread(f"r{i}", i, answers) for i in range(4)]
    wait_until(lambda: writer.waiting == 4, timeout=60)
    gate.set()
    for thread in [holder, *threads]:
        thread.join(60)

    assert groups == [0, 4], "the four requests shared one transaction"
    assert {name: a.status_code for name, a in answers.items()} == {f"r{i}": 200 for i in range(4)}
    for answer in answers.values():
        body = answer.json()
        assert body["stored"] is False
        assert body["results"][0]["prediction_id"] is None
        assert len(body["predictions"]) == 5  # the answer itself is whole
    assert failures() == before + 4, "counted once per request"


@pytest.mark.django_db(transaction=True)
def test_a_request_that_gives_up_after_a_writer_took_its_rows_says_not_stored_but_is_written(
    ready_engine, monkeypatch, settings
):
    # The documented outcome (history.GroupCommit.write): a request whose rows another
    # request's transaction took, and that stops waiting before that transaction commits,
    # answers "stored": false; the transaction then commits its row all the same.
    settings.CLASSIFIER_STORE_TIMEOUT_MS = 300
    gate, groups = threading.Event(), []

    def commit(rows, timeout_ms):
        groups.append(len(rows))
        if len(groups) == 1:
            gate.wait(10)
            return
        time.sleep(1.5)  # a slow transaction: longer than "late" waits
        history.commit_rows(rows, 10_000)

    class LateLosesTheTurn:
        """The turn lock, except that "late" never wins it (it loses the race)."""

        def __init__(self):
            self.lock = threading.Lock()

        def acquire(self, timeout=-1):
            if threading.current_thread().name == "late":
                time.sleep(timeout)
                return False
            return self.lock.acquire(timeout=timeout)

        def release(self):
            self.lock.release()

    writer = GroupCommit(commit, turn=LateLosesTheTurn())
    monkeypatch.setattr(history, "writer", writer)
    holder = threading.Thread(target=writer.write, args=([], 10_000))
    holder.start()
    wait_until(lambda: groups == [0])
    answers = {}
    threads = [post_in_thread("late", 1, answers)]
    wait_until(lambda: writer.waiting == 1, timeout=60)
    threads.append(post_in_thread("writer", 2, answers))
    wait_until(lambda: writer.waiting == 2, timeout=60)
    gate.set()  # "writer" wins the turn and takes both rows into its slow transaction
    for thread in [holder, *threads]:
        thread.join(60)

    assert groups == [0, 2]
    late, other = answers["late"].json(), answers["writer"].json()
    assert (late["stored"], late["results"][0]["prediction_id"]) == (False, None)
    assert other["stored"] is True
    rows = {row.filename: row for row in Prediction.objects.all()}
    assert set(rows) == {"late.jpg", "writer.jpg"}, "the late request's row exists after all"
    assert rows["late.jpg"].sha256 == late["results"][0]["sha256"]


def row(name: str, probability: float = 0.5) -> Prediction:
    return Prediction(
        source="api",
        filename=name,
        sha256="0" * 64,
        width=1,
        height=1,
        image_format="JPEG",
        thumbnail=b"",
        top_k=[{"label": "beagle", "probability": probability}],
        top_label="beagle",
        top_probability=0.5,
        inference_ms=1.0,
        total_ms=1.0,
        model_name="ResNet50",
        weights="random",
        engine="tensorflow",
    )


@pytest.mark.django_db(transaction=True)
def test_a_row_the_database_refuses_fails_only_its_own_request_in_the_group():
    turn = threading.Lock()
    turn.acquire()  # the turn is busy while all four come to write
    writer = GroupCommit(history.commit_rows, turn=turn)
    rows = {name: row(name) for name in "abc"}
    rows["bad"] = row("bad", float("nan"))  # JSON with NaN: refused by either database
    outcomes: dict[str, object] = {}

    def write(name):
        try:
            writer.write([rows[name]], 10_000)
            outcomes[name] = None
        except Exception as exc:
            outcomes[name] = exc
        finally:
            connection.close()  # back to the pool (PostgreSQL)

    threads = [threading.Thread(target=write, args=(name,)) for name in rows]
    for thread in threads:
        thread.start()
    wait_until(lambda: writer.waiting == 4)
    turn.release()
    for thread in threads:
        thread.join(30)
    assert {name: outcomes[name] for name in "abc"} == {"a": None, "b": None, "c": None}
    assert isinstance(outcomes["bad"], DatabaseError)
    assert sorted(Prediction.objects.values_list("filename", flat=True)) == ["a", "b", "c"]
