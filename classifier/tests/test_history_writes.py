"""Group commit of the history (history.GroupCommit), with a stand-in transaction: the
requests that come to store while another one writes are written together, each learns
what happened to its own rows, and none waits past its timeout."""

import threading
import time

import pytest

from classifier.history import GroupCommit, StoreTimeout


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
    time.sleep(0.2)  # all eight are waiting for the writer's turn
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
    time.sleep(0.2)
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
