"""Load generation and a real gunicorn on loopback, for `manage.py benchmark`, `manage.py
soak` and the tests that drive the real server.

`Server` starts gunicorn with the shipped gunicorn.conf.py and random weights on a free
127.0.0.1 port; `drive` sends closed-loop multipart uploads of generated JPEGs to it and
tallies what each upload got. Nothing is downloaded and no traffic leaves the machine.
Over 300 lines: the launcher and the load generator are one job, used together everywhere.
"""

from __future__ import annotations

import functools
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from django.conf import settings
from PIL import Image


@dataclass
class LoadResult:
    label: str
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    errors: dict[int, int] = field(default_factory=dict)
    error_latencies: dict[int, list[float]] = field(default_factory=dict)
    elapsed: float = 0.0
    images: int = 0
    mean_batch: float | None = None
    # The server's inference thread over the step: its share of the wall clock spent in
    # forward passes, and a pass's time per image. The ratio to the ceiling is their
    # product with the ceiling's own time per image: busy x (raw ms / served ms).
    busy: float | None = None
    pass_ms_per_image: float | None = None
    peak_rss_mib: float | None = None
    # The workers' CPU time over the step, as a share of the CPUs they may use: what a
    # Kubernetes HPA's utilisation reads when the pod requests that many CPUs.
    cpu_share: float | None = None
    engine: str = ""
    # The engine's raw ceiling re-measured right before and after this step (`--bracket`),
    # or empty: then the ceiling from the start of the run applies.
    ceilings: list[float] = field(default_factory=list)
    stage_sums: dict[str, float] = field(default_factory=dict)
    stage_samples: int = 0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")

    @property
    def throughput(self) -> float:
        return self.images / self.elapsed if self.elapsed else 0.0


def add_server_env_argument(parser) -> None:
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the server (repeatable)",
    )


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'500x375,4000x3000' -> [(500, 375), (4000, 3000)]"""
    return [tuple(int(v) for v in size.split("x")) for size in text.split(",")]


def plan(
    sizes: list[tuple[int, int]], concurrencies: list[int]
) -> list[tuple[int, list[tuple[int, int]]]]:
    """The load steps, as (clients, sizes). At one client all sizes take turns in one
    step: the targets compare their latencies (4000x3000 against 500x375), and this
    machine's speed drifts between steps a minute apart. The others, size by size."""
    steps = [(1, sizes)] if 1 in concurrencies else []
    return steps + [(c, [size]) for size in sizes for c in concurrencies if c != 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerFailed(RuntimeError):
    """gunicorn exited, or did not become ready in time; the message ends with its log."""


class Server:
    """gunicorn with the shipped config, as `make run` starts it, on a free loopback port,
    its output in a log file in `folder`. `env` goes on top of this process's environment
    and random weights; with GUNICORN_CERTFILE in it, `url` is https."""

    def __init__(self, folder: Path, env: dict[str, str], *, args: tuple[str, ...] = ()):
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        scheme = "https" if env.get("GUNICORN_CERTFILE") else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.log_path = folder / f"gunicorn-{self.port}.log"
        self.args = args
        self.env = {
            **os.environ,
            "GUNICORN_BIND": f"127.0.0.1:{self.port}",
            "CLASSIFIER_WEIGHTS": "random",
            **env,
        }
        self.process: subprocess.Popen | None = None
        self.log = None
        self.started = 0.0  # time.monotonic() at start()
        self._output: str | None = None  # the whole log, once stopped

    def start(self) -> Server:
        """Launch gunicorn; do not wait for it (see `wait_ready`)."""
        self.log = open(self.log_path, "w+")  # noqa: SIM115 - closed in stop()
        self.started = time.monotonic()
        self.process = subprocess.Popen(  # noqa: S603 - fixed command, args from this code
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", *self.args, "webapp.wsgi"],
            cwd=settings.BASE_DIR,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_ready(
        self, timeout: float = 120, verify: bool | str = True, probe_timeout: float = 5
    ) -> list[int]:
        """Poll /readyz until 200; return every status seen on the way."""
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerFailed(
                    f"gunicorn exited with {self.process.returncode}:\n{self.output()}"
                )
            try:
                status = requests.get(
                    f"{self.url}/readyz", timeout=probe_timeout, verify=verify
                ).status_code
            except (requests.ConnectionError, requests.Timeout):
                status = None  # not listening yet, or too busy loading the model to answer
            if status is not None:
                seen.append(status)
            if status == 200:
                return seen
            time.sleep(0.05)
        raise ServerFailed(f"gunicorn not ready after {timeout}s, {seen[-5:]}:\n{self.output()}")

    def boot(self, timeout: float = 180) -> float:
        """Migrate its database, start, wait until ready: the seconds from start to ready."""
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
            cwd=settings.BASE_DIR,
            env=self.env,
            check=True,
        )
        self.start()
        # Short probes: one stuck behind the loading model must not make cold start read late.
        self.wait_ready(timeout, probe_timeout=2)
        return time.monotonic() - self.started

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self, last: int = 4000) -> str:
        if self._output is not None:
            return self._output[-last:]
        self.log.seek(0)
        return self.log.read()[-last:]

    def stop(self, grace: float = 30) -> str:
        """SIGTERM, SIGKILL after `grace` seconds; the whole log. Safe to call again."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._output is None and self.log is not None:
            self.log.seek(0)
            self._output = self.log.read()
            self.log.close()
        return self._output or ""

    def batching(self) -> dict:
        return requests.get(f"{self.url}/model", timeout=10).json()["batching"]

    def worker_pids(self) -> list[int]:
        return worker_pids(self.pid)

    def peak_rss_mib(self) -> float | None:
        """Largest VmHWM (peak resident set) among the worker processes so far."""
        peaks = [m for pid in self.worker_pids() if (m := status_mib(pid, "VmHWM")) is not None]
        return max(peaks) if peaks else None

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the worker processes have used so far."""
        return sum(cpu_seconds(pid) for pid in self.worker_pids())

    def rss_mib(self) -> float | None:
        """Resident memory of all worker processes now (VmRSS, summed)."""
        sizes = [m for pid in self.worker_pids() if (m := status_mib(pid, "VmRSS")) is not None]
        return sum(sizes) if sizes else None


def command_server(folder: Path, server_env: list[str]) -> Server:
    """The server of `manage.py benchmark` and `soak`: a throwaway SQLite database in
    `folder` unless DATABASE_URL is set, no access log, `--server-env` on top."""
    env = {
        "DJANGO_SECRET_KEY": "benchmark-only",
        "DATABASE_URL": os.environ.get("DATABASE_URL") or f"sqlite:///{folder / 'bench.sqlite3'}",
        "GUNICORN_LOG_LEVEL": "warning",
    }
    for item in server_env:
        name, _, value = item.partition("=")
        env[name] = value
    return Server(folder, env, args=("--access-logfile", "/dev/null"))


def worker_pids(master_pid: int) -> list[int]:
    """gunicorn's workers: the children of its master process (Linux /proc)."""
    try:
        children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    except OSError:
        return []
    return [int(pid) for pid in children]


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time so far (Linux /proc), 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # After the command's ")": state is field 3, utime and stime fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_mib(pid: int, field: str) -> float | None:
    """A memory field of /proc/<pid>/status (VmRSS, VmHWM) in MiB; None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def connect(url: str, timeout: float = 60) -> http.client.HTTPConnection:
    # http.client, not requests: the load generator shares the server's cores, so it
    # should cost as little CPU per request as it can.
    host, port = url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=timeout)


def post(
    connection: http.client.HTTPConnection, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes]:
    """POST /predict on a kept-alive connection: (status, body), or (0, b"") if the
    connection failed (it is closed, and http.client reopens it for the next request)."""
    try:
        connection.request("POST", "/predict", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        connection.close()
        return 0, b""


def multipart_jpeg(width: int, height: int, count: int = 1) -> tuple[bytes, str]:
    """`photo_jpeg` wrapped in a multipart body, as `count` image fields."""
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="image"; filename="bench.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    )
    part = head.encode() + photo_jpeg(width, height) + b"\r\n"
    body = part * count + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@functools.cache
def photo_jpeg(width: int, height: int) -> bytes:
    """A photo-like JPEG (smooth gradients + sensor-like noise, quality 90). At 4000x3000
    it weighs what a 12 MP phone photo does, so its entropy decoding (the floor of any
    JPEG decode, draft mode or not) costs what a real upload's does."""
    rng = np.random.default_rng(width * height)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack(
        [
            128 + 100 * np.sin(xx / (width / 7)),
            128 + 100 * np.cos(yy / (height / 5)),
            128 + 60 * np.sin((xx + yy) / (width / 3)),
        ],
        axis=-1,
    ) + rng.normal(0, 8, (height, width, 3))
    out = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def upload(width: int, height: int) -> tuple[str, bytes, str]:
    """(label, multipart body, content type) of one generated JPEG, for `drive`."""
    return (f"{width}x{height}", *multipart_jpeg(width, height))


def drive(
    url: str,
    uploads: list[tuple[str, bytes, str]],
    *,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
) -> list[LoadResult]:
    """Closed loop: each client sends its next request when the previous one returns.

    Measured is the steady state, as wrk and hey measure it: the requests that complete
    within a window, over the window's length. It opens when every client has had its
    warm-up answers (one per upload; the clients are not held back to start together,
    which would send them all at once into an empty server) and closes after
    `max_seconds`, or when `max_requests` have been sent in it. Requests still in flight
    then (a whole round of latency at many clients) do not count: their drain, at ever
    fewer clients, is not the load being measured.

    With several uploads each client sends them in turn, client i starting at the i-th,
    and each upload gets its own result; the window's time is shared out among them by
    the time their requests took."""
    n = len(uploads)
    results = [LoadResult(label=label, concurrency=concurrency) for label, _, _ in uploads]
    requests_ = [
        (body, {"Content-Type": content_type, "Content-Length": str(len(body))})
        for _, body, content_type in uploads
    ]
    done: list[tuple[int, float, float, int, bytes]] = []  # upload, ended, took, status, body
    changed = threading.Condition()
    warmed = sent = 0
    window: list[float] = []  # [opened], then [opened, closed]
    give_up = time.monotonic() + max_seconds + 120  # if warming up takes that long

    def client(turn: int):
        nonlocal warmed, sent
        connection = connect(url)
        for _ in range(n):  # the warm-up: fills the pipeline, not counted
            post(connection, *requests_[turn % n])
            turn += 1
        with changed:
            warmed += 1
            changed.notify_all()
        while True:
            with changed:
                now = time.monotonic()
                closes = window[0] + max_seconds if window else give_up
                if len(window) > 1 or now >= closes or sent >= max_requests:
                    if window and len(window) == 1:
                        window.append(min(now, closes))
                    connection.close()
                    return
                sent += bool(window)
            index = turn % n
            turn += 1
            t = time.monotonic()
            status, payload = post(connection, *requests_[index])
            ended = time.monotonic()
            with changed:
                done.append((index, ended, ended - t, status, payload))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    with changed:
        changed.wait_for(lambda: warmed == concurrency, timeout=give_up - time.monotonic())
        window.append(time.monotonic())
    for thread in threads:
        thread.join()
    _tally(results, done, *window)
    return results


def _tally(results: list[LoadResult], done: list, opened: float, closed: float) -> None:
    """The answers that came within the window, each in its upload's result; the window's
    length shared out among the uploads by the time their requests took."""
    for index, ended, took, status, payload in done:
        if not opened <= ended <= closed:
            continue
        result = results[index]
        if status == 200:
            result.latencies.append(took)
            result.images += 1
            _add_stages(result, payload)
        else:
            result.errors[status] = result.errors.get(status, 0) + 1
            result.error_latencies.setdefault(status, []).append(took)
    busy = [sum(r.latencies) + sum(map(sum, r.error_latencies.values())) for r in results]
    for result, own in zip(results, busy, strict=True):
        share = own / sum(busy) if sum(busy) else 1 / len(results)
        result.elapsed = (closed - opened) * share


def _add_stages(result: LoadResult, payload: bytes) -> None:
    try:
        timings = json.loads(payload)["timings_ms"]
    except (ValueError, KeyError):
        return
    for name, ms in timings.items():
        result.stage_sums[name] = result.stage_sums.get(name, 0.0) + ms
    result.stage_samples += 1
