"""The prediction history's writer: one Prediction row per classified image, written by
group commit within CLASSIFIER_STORE_TIMEOUT_MS. Imports nothing from services.

Losing a history row is better than losing the answer: a request whose rows cannot be
written in time still gets its predictions, marked as not stored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError, connection, transaction

from . import metrics
from .engines import ModelInfo
from .images import DecodedImage
from .model import ClassScore
from .models import FILENAME_MAX_LENGTH, Prediction

logger = logging.getLogger(__name__)


class StoreTimeout(Exception):
    """No turn to write, or no answer from the database, within the store timeout."""


def prediction_rows(
    *,
    items: Sequence[
        tuple[str, DecodedImage, list[ClassScore], list[list[float]] | None, bytes | None]
    ],
    info: ModelInfo,
    source: str,
    inference_ms: float,
    total_ms: float,
) -> list[Prediction]:
    """The unsaved rows of one request: (filename, image, top-k, activation map, stored
    features) for each of its images."""
    return [
        Prediction(
            source=source,
            filename=filename[:FILENAME_MAX_LENGTH],
            sha256=image.sha256,
            width=image.width,
            height=image.height,
            image_format=image.format,
            thumbnail=image.thumbnail,
            top_k=[score.as_dict() for score in scores],
            top_label=scores[0].label,
            top_probability=scores[0].probability,
            activation_map=cells,
            inference_ms=inference_ms,
            total_ms=total_ms,
            model_name=info.name,
            model_version=info.version,
            weights=info.weights,
            engine=info.engine,
            precision=info.precision,
            features=stored_features,
        )
        for filename, image, scores, cells, stored_features in items
    ]


def record(rows: list[Prediction]) -> list[int | None]:
    """Store the rows in one transaction (with those of other requests storing at the same
    time), within CLASSIFIER_STORE_TIMEOUT_MS; the ids, or Nones when the database is
    down, slow or failing (logged and counted)."""
    try:
        writer.write(rows, settings.CLASSIFIER_STORE_TIMEOUT_MS)
        return [row.pk for row in rows]
    except (DatabaseError, StoreTimeout) as exc:
        metrics.HISTORY_WRITE_FAILURES.inc()
        detail = str(exc).strip()
        logger.error(
            "Prediction not recorded (%d image(s), top label %r): %s: %s",
            len(rows),
            rows[0].top_label,
            type(exc).__name__,
            detail.splitlines()[0] if detail else "no detail",
        )
        return [None] * len(rows)


@dataclass(eq=False)
class _Pending:
    rows: list[Prediction]
    done: threading.Event = field(default_factory=threading.Event)
    error: Exception | None = None


class GroupCommit:
    """Writes the history one transaction at a time per process, each with the rows of
    every request waiting to store (group commit).

    The requests of a forward pass all come to store their rows at the same moment. One
    transaction each, one after the other (SQLite has a single writer; PostgreSQL flushes
    its log at every commit), would answer them one by one while the model waits for
    those clients to come back. Here the request whose turn it is writes the rows of all
    that are waiting, in one transaction; the others find theirs written (or the error
    that stopped them). Taking turns in the process also keeps SQLite's busy handler out
    of it, which waits by sleeping 1, 2, 5, 10... ms."""

    def __init__(
        self,
        commit: Callable[[list[Prediction], float], None],
        *,
        turn: threading.Lock | None = None,
    ) -> None:
        self._commit = commit  # (rows, timeout_ms): one transaction, or raises
        # Whose turn it is to write; a test may pass its own, to decide who wins it.
        self._turn = turn if turn is not None else threading.Lock()
        self._lock = threading.Lock()
        self._waiting: list[_Pending] = []

    @property
    def waiting(self) -> int:
        """Requests whose rows wait for a writer to take them."""
        with self._lock:
            return len(self._waiting)

    def write(self, rows: list[Prediction], timeout_ms: float) -> None:
        """Store `rows` (their pks are set), or raise DatabaseError / StoreTimeout."""
        mine = _Pending(rows)
        with self._lock:
            self._waiting.append(mine)
        if self._turn.acquire(timeout=timeout_ms / 1000):
            try:
                with self._lock:
                    group, self._waiting = self._waiting, []
                if group:  # else: the previous writer took ours too
                    self._write_group(group, timeout_ms)
            finally:
                self._turn.release()
        else:
            with self._lock:
                taken = mine not in self._waiting
                if not taken:  # no writer has ours: give up, it is never written
                    self._waiting.remove(mine)
            # Else a writer has ours in its transaction, bounded by the same timeout.
            # (Should it commit after we gave up, the row exists though the answer said not.)
            if not (taken and mine.done.wait(timeout_ms / 1000)):
                raise StoreTimeout(f"waited {timeout_ms:g} ms for the database")
        if mine.error is not None:
            raise mine.error

    def _write_group(self, group: list[_Pending], timeout_ms: float) -> None:
        try:
            self._commit([row for pending in group for row in pending.rows], timeout_ms)
        except (DataError, IntegrityError) as exc:
            if len(group) == 1:
                self._done(group, exc)
                return
            # A row the database refuses fails its transaction, not the other requests of
            # the group: each writes alone (the database itself is fine, so this is quick).
            for pending in group:
                self._write_group([pending], timeout_ms)
        except Exception as exc:  # down, slow, failing: every request of the group learns why
            self._done(group, exc)
        else:
            self._done(group, None)

    @staticmethod
    def _done(group: list[_Pending], error: Exception | None) -> None:
        for pending in group:
            pending.error = error
            pending.done.set()


def commit_rows(rows: list[Prediction], timeout_ms: float) -> None:
    """One transaction inserting `rows`, bounded by `timeout_ms` on either database."""
    if connection.vendor == "sqlite":  # another process may hold the database
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # Waiting on a lock, a full disk, a stuck server: give up in time.
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('statement_timeout', %s, true)", [str(timeout_ms)]
                )
        Prediction.objects.bulk_create(rows)


# The process's writer (tests may put another in its place).
writer = GroupCommit(commit_rows)
