"""Inference statistics per served model, kept as Triton's statistics extension reports
them (GET /v2/models/stats): requests that succeeded and failed with their time in the
server, and the parts of a successful request's time, per request and per forward pass
(by batch size). Triton's own tools read them: perf_analyzer prints its server-side
breakdown from them.

What each part is here (a request's images go through these in order):
- compute_input: decoding the image files and turning them into the model's input
  (in the request thread; `pixels` only checked and copied);
- queue: from the request joining the micro-batcher's queue to its forward pass starting;
- compute_infer: the forward pass of the batch the request was in;
- compute_output: ranking the classes and the activation maps (in the request thread);
- success: the whole request, from the view receiving it to its answer being ready; what
  is not in the parts above is reading the body and recording the history.
A forward pass (an "execution") counts once per model with a request in it, under its
batch size: compute_input there is joining the requests' inputs into one batch,
compute_infer the pass, compute_output handing each request its rows.

Counters of this process: with one worker per pod (the shipped gunicorn.conf.py), of the
pod. No Django imports.

https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_statistics.md
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Duration:
    """How many, and their total time in nanoseconds (Triton's StatisticDuration)."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += max(0, round(seconds * 1e9))

    def as_json(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass
class _BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class RequestTimes:
    """A successful request's time in seconds: in all, and by part (module docstring)."""

    total: float
    compute_input: float
    queue: float
    compute_infer: float
    compute_output: float


class ModelStatistics:
    """One model's counters (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.last_inference_ms = 0  # when the last request succeeded, ms since the epoch
        self.inference_count = 0  # images classified
        self.execution_count = 0  # forward passes
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self._batches: dict[int, _BatchStats] = {}

    def succeeded(self, images: int, times: RequestTimes) -> None:
        with self._lock:
            self.last_inference_ms = int(time.time() * 1000)
            self.inference_count += images
            self.success.add(times.total)
            self.queue.add(times.queue)
            self.compute_input.add(times.compute_input)
            self.compute_infer.add(times.compute_infer)
            self.compute_output.add(times.compute_output)

    def failed(self, seconds: float) -> None:
        with self._lock:
            self.fail.add(seconds)

    def executed(self, batch_size: int, join_s: float, pass_s: float, split_s: float) -> None:
        with self._lock:
            self.execution_count += 1
            stats = self._batches.setdefault(batch_size, _BatchStats())
            stats.compute_input.add(join_s)
            stats.compute_infer.add(pass_s)
            stats.compute_output.add(split_s)

    def as_json(self, name: str, version: str) -> dict:
        """Triton's ModelStatistics for this model."""
        with self._lock:
            zero = Duration().as_json()
            return {
                "name": name,
                "version": version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    "success": self.success.as_json(),
                    "fail": self.fail.as_json(),
                    "queue": self.queue.as_json(),
                    "compute_input": self.compute_input.as_json(),
                    "compute_infer": self.compute_infer.as_json(),
                    "compute_output": self.compute_output.as_json(),
                    # No response cache: never a hit or a miss.
                    "cache_hit": zero,
                    "cache_miss": zero,
                },
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": stats.compute_input.as_json(),
                        "compute_infer": stats.compute_infer.as_json(),
                        "compute_output": stats.compute_output.as_json(),
                    }
                    for size, stats in sorted(self._batches.items())
                ],
                "memory_usage": [],
            }


class Registry:
    """The statistics of each served model, by name (made on first use; thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, ModelStatistics] = {}

    def __getitem__(self, name: str) -> ModelStatistics:
        with self._lock:
            return self._models.setdefault(name, ModelStatistics())

    def executed(
        self, names: Iterable[str | None], batch_size: int, join_s: float, pass_s: float,
        split_s: float,
    ) -> None:  # fmt: skip
        """A forward pass that answered requests of the models `names` (MicroBatcher's
        `on_batch`)."""
        for name in set(names):
            if name is not None:
                self[name].executed(batch_size, join_s, pass_s, split_s)
