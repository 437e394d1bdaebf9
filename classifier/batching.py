"""Micro-batching: many request threads, one inference thread, one forward pass per batch.

Request threads announce themselves (`incoming()`), decode their images, then `submit()`
the arrays here and wait. The inference thread takes whatever is queued (up to
`max_batch` images), runs one forward pass and hands each caller its own rows.

A lone request after a lone request runs at once. Under load (the load seen at the end
of the last pass is more than is queued now, or admitted requests are still decoding)
the inference thread waits up to `max_wait_ms` for them, so that batches stay full
instead of alternating big and small. With `arrival_gap_ms` it also stops waiting once
nothing has happened for that long while no request is in a request thread: none
admitted and still decoding, none answered by the last pass and still finishing (ranking,
maps, history), none arriving. Then the load dropped: nobody else is coming.

No Django imports. Errors are typed (classifier.errors) so the web layer can answer 503 +
Retry-After.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .errors import BatchFailed, Overloaded

logger = logging.getLogger(__name__)


class QueueFull(Overloaded):
    pass


class QueueTimeout(Overloaded):
    pass


class ShuttingDown(Overloaded):
    retry_after = 5


@dataclass
class BatchResult:
    probabilities: np.ndarray  # this request's rows only
    # Its rows of the engine's second output (the features class activation maps are made
    # of), when the batcher's function gives one.
    features: np.ndarray | None
    batch_size: int  # images in the forward pass
    queued_ms: float  # from submit() to the start of the forward pass
    inference_ms: float  # the forward pass


@dataclass
class _Job:
    inputs: np.ndarray
    deadline: float
    ticket: _Ticket | None = None
    tag: str | None = None  # whose request (the served model's name), for `on_batch`
    submitted: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: BatchResult | None = None
    error: Exception | None = None


@dataclass
class _Ticket:
    count: int
    open: bool = True  # admitted, not yet submitted (decoding)
    finishing: bool = False  # answered by its pass, still in its request thread


@dataclass
class BatcherStats:
    batches: int = 0
    images: int = 0
    failed_batches: int = 0
    rejected_full: int = 0
    rejected_timeout: int = 0
    # Time the inference thread spent in forward passes: over a stretch of load, its share
    # of the wall clock is how busy the model was, and per image what a pass cost here.
    pass_seconds: float = 0.0

    @property
    def mean_batch(self) -> float:
        return self.images / self.batches if self.batches else 0.0


class MicroBatcher:
    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray | tuple[np.ndarray, np.ndarray]],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 0.0,
        arrival_gap_ms: float | None = None,
        max_queue: int = 64,
        queue_timeout_s: float = 10.0,
        requests_coming: Callable[[], int] | None = None,
        on_batch: Callable[[list[str | None], int, float, float, float], None] | None = None,
        name: str = "inference",
    ) -> None:
        self._predict = predict
        # Told of each forward pass that answered: its jobs' tags, its size, and the
        # seconds spent joining the inputs, in the pass and handing out the rows.
        self._on_batch = on_batch
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        # A forming batch stops waiting when nothing has happened for this long and no
        # request is in a request thread: the clients it expected are not coming back
        # (the load dropped). None: wait max_wait.
        self.arrival_gap = arrival_gap_ms / 1000 if arrival_gap_ms is not None else None
        # Requests admitted, submitted and finished so far: a forming batch's gap counts
        # from the last of these.
        self._progress = 0
        # Requests with a body in request threads now, admitted or not yet, or that just
        # started arriving (the server's front counts them): an idle batcher's first
        # request waits for a burst's others.
        self._requests_coming = requests_coming or (lambda: 0)
        self.max_queue = max_queue  # images admitted and waiting (decoding or queued)
        self.queue_timeout = queue_timeout_s
        self.stats = BatcherStats()
        self._queue: collections.deque[_Job] = collections.deque()
        self._queued_images = 0
        self._incoming = 0  # images announced but not yet submitted (decoding)
        self._finishing = 0  # images answered by a pass, still in their request thread
        self._running = False  # a forward pass is running
        # Since when nothing has been in the server (see _arrive); None: something is.
        self._quiet_since: float | None = None
        self._expected = 0  # images the next batch can expect (the load), see _linger_target
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- request threads -------------------------------------------------------------
    @contextlib.contextmanager
    def incoming(self, count: int = 1):
        """Admit a request of `count` images that will `submit(..., ticket)` once decoded,
        for as long as it is in its request thread: leave the block when the request is
        done with (ranked, recorded), not just answered by its pass.

        Admission control happens here, before the request spends CPU on decoding: when
        `max_queue` images are already admitted and waiting (decoding or queued), it is
        refused at once with QueueFull. A forming batch waits for admitted requests that
        are still decoding, and counts its arrival gap from when the requests of the last
        pass are done with (their clients come back after that).
        """
        with self._cond:
            if self._closing:
                raise ShuttingDown("the server is shutting down")
            waiting = self._incoming + self._queued_images
            if waiting and waiting + count > self.max_queue:
                self.stats.rejected_full += 1
                raise QueueFull(f"{waiting} images are already waiting (limit {self.max_queue})")
            self._arrive()
            self._incoming += count
        ticket = _Ticket(count)
        try:
            yield ticket
        finally:
            with self._cond:
                if ticket.open:  # left without submitting (bad image): withdraw
                    self._incoming -= ticket.count
                if ticket.finishing:
                    self._finishing -= ticket.count
                self._progress += 1
                self._note_quiet()
                self._cond.notify()

    def submit(
        self, inputs: np.ndarray, ticket: _Ticket | None = None, tag: str | None = None
    ) -> BatchResult:
        """Queue `inputs` (N, ...) and wait for their probabilities (N, classes).

        With a ticket from `incoming()` the request was already admitted; without one it
        is admitted here, by the same rule. `tag` reaches `on_batch` with the pass."""
        count = len(inputs)
        with self._cond:
            if ticket is not None and ticket.open:
                ticket.open = False
                self._incoming -= ticket.count
            elif self._closing:
                raise ShuttingDown("the server is shutting down")
            else:
                waiting = self._incoming + self._queued_images
                if waiting and waiting + count > self.max_queue:
                    self.stats.rejected_full += 1
                    raise QueueFull(
                        f"{waiting} images are already waiting (limit {self.max_queue})"
                    )
                self._arrive()
            self._progress += 1
            job = _Job(inputs, time.monotonic() + self.queue_timeout, ticket, tag)
            self._queue.append(job)
            self._queued_images += count
            self._cond.notify()
        # The job is answered by the inference thread; the extra time covers one
        # forward pass in progress. Never wait forever, even if that thread died.
        if not job.done.wait(self.queue_timeout * 2 + 60):
            raise BatchFailed("no answer from the inference thread")
        if job.error is not None:
            raise job.error
        return job.result

    def _arrive(self) -> None:
        """A request is admitted (the lock held). If nothing had been in the server for
        longer than the arrival gap, the load the last pass saw is gone: its clients did
        not come back. Forget it, so that a lone request after a busy spell runs at once."""
        now = time.monotonic()
        quiet = self._quiet_since
        if quiet is not None and self.arrival_gap is not None and now - quiet > self.arrival_gap:
            self._expected = 0
        self._quiet_since = None
        self._progress += 1

    def _note_quiet(self) -> None:
        """Nothing admitted, queued, running or finishing any more (the lock held)."""
        idle = not (self._incoming or self._finishing or self._queue or self._running)
        if idle and self._quiet_since is None:
            self._quiet_since = time.monotonic()

    @property
    def queued_images(self) -> int:
        return self._queued_images

    def check_capacity(self) -> None:
        """Cheap early refusal, before a request's body is even read: raise QueueFull if
        `max_queue` images are already waiting. (`incoming()` decides for real.)"""
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        if self._incoming + self._queued_images >= self.max_queue:
            self.stats.rejected_full += 1
            raise QueueFull(f"{self.max_queue} images are already waiting")

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new work, finish what is queued or admitted (still decoding), stop the
        thread. Admitted requests were promised an answer: gunicorn calls this when a
        stopping worker has answered its in-flight requests, or its grace period is over."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    # -- the inference thread ----------------------------------------------------------
    def _run(self) -> None:
        while True:
            jobs = self._next_batch()
            if jobs is None:
                return
            if jobs:
                self._run_batch(jobs)

    def _next_batch(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue:
                if self._closing and not self._incoming:
                    return None
                self._cond.wait()
            target, waited_since = self._linger_target(), time.monotonic()
            if target:
                now = time.monotonic()
                end, last_event, progress = now + self.max_wait, now, self._progress
                while self._queued_images < target:
                    now = time.monotonic()
                    target = max(target, self._load())  # a burst still coming in
                    if self._progress != progress:  # noticed within a gap of the event
                        progress, last_event = self._progress, now
                    left = end - now
                    if self.arrival_gap is not None and not (self._incoming or self._finishing):
                        left = min(left, last_event + self.arrival_gap - now)
                    if left <= 0:
                        break
                    self._cond.wait(left)
            jobs, size, now = [], 0, time.monotonic()
            while self._queue:
                job = self._queue[0]
                if jobs and size + len(job.inputs) > self.max_batch:
                    break
                self._queue.popleft()
                self._queued_images -= len(job.inputs)
                if now > job.deadline:
                    self.stats.rejected_timeout += 1
                    job.error = QueueTimeout(
                        f"waited {now - job.submitted:.1f}s for the model (limit "
                        f"{self.queue_timeout:.1f}s)"
                    )
                    self._answer(job)
                    continue
                jobs.append(job)
                size += len(job.inputs)
            self._running = bool(jobs)
            if jobs:
                # Why a batch has the size it has, for whoever tunes the wait (LOG_LEVEL=DEBUG).
                logger.debug(
                    "batch of %d: expected %d, waited %.0f ms for %d; %d decoding, %d finishing",
                    size, self._expected, (now - waited_since) * 1000, target,
                    self._incoming, self._finishing,
                )  # fmt: skip
            return jobs

    def _linger_target(self) -> int:
        """How many images to wait for (at most `max_wait`) before running; 0: run now.

        The load seen at the end of the last pass (its images plus those that arrived
        during it) is the best guess of what the next batch can have: the clients just
        answered come back a few ms later. Running only what is already queued would split
        the load into alternating batches (e.g. 14 + 2, or 8 + 8, at 16 clients) whose
        passes overlap with the other half's decoding, slowing both. A lone request after
        a lone request (expected 1) never waits, unless other requests with a body are in
        request threads or just started arriving: a burst, on its way to admission."""
        if not self.max_wait or self._closing:
            return 0
        target = self._load()
        return target if self._queued_images < target else 0

    def _load(self) -> int:
        admitted = self._incoming + self._queued_images
        return min(max(self._expected, admitted, self._requests_coming()), self.max_batch)

    def _run_batch(self, jobs: list[_Job]) -> None:
        joining = time.monotonic()
        inputs = jobs[0].inputs if len(jobs) == 1 else np.concatenate([j.inputs for j in jobs])
        started = time.monotonic()
        try:
            outputs = self._predict(inputs)
        except Exception as exc:
            logger.exception("Forward pass of a batch of %d images failed", len(inputs))
            self.stats.pass_seconds += time.monotonic() - started
            self.stats.failed_batches += 1
            with self._cond:
                self._running = False
                for job in jobs:
                    job.error = BatchFailed(f"the model failed on this batch: {type(exc).__name__}")
                    self._answer(job)
                self._note_quiet()
            return
        finished = time.monotonic()
        probabilities, features = outputs if isinstance(outputs, tuple) else (outputs, None)
        self.stats.batches += 1
        self.stats.images += len(inputs)
        self.stats.pass_seconds += finished - started
        with self._cond:
            # The load: this pass's images, and those of earlier passes still finishing,
            # whose clients will be back in a moment, plus those that arrived meanwhile.
            load = len(inputs) + self._finishing + self._queued_images + self._incoming
            self._expected = min(load, self.max_batch)
            self._running = False
            offset = 0
            for job in jobs:
                rows = len(job.inputs)
                job.result = BatchResult(
                    probabilities=probabilities[offset : offset + rows],
                    features=None if features is None else features[offset : offset + rows],
                    batch_size=len(inputs),
                    queued_ms=(started - job.submitted) * 1000,
                    inference_ms=(finished - started) * 1000,
                )
                offset += rows
                self._answer(job)
            self._note_quiet()
        if self._on_batch is not None:
            try:
                self._on_batch(
                    [job.tag for job in jobs],
                    len(inputs),
                    started - joining,
                    finished - started,
                    time.monotonic() - finished,
                )
            except Exception:  # statistics must never stop the inference thread
                logger.exception("on_batch failed")

    def _answer(self, job: _Job) -> None:
        """Hand `job` its result or error (the lock held). A request admitted with a
        ticket is finishing from now until it leaves `incoming()`."""
        if job.ticket is not None:
            job.ticket.finishing = True
            self._finishing += job.ticket.count
        job.done.set()
