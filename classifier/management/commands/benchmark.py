"""`python manage.py benchmark`: the raw model ceiling and the real server, in one run.

1. Times the compiled forward pass in this process (no HTTP) at batch 1 and the max batch.
2. Starts gunicorn with the shipped gunicorn.conf.py and random weights on loopback, with
   a throwaway SQLite database (or DATABASE_URL), and times its cold start to ready.
3. Drives closed-loop load with multipart uploads of generated JPEGs at each concurrency,
   bounded in requests and in time, and prints one table. At one client the sizes take
   turns in one step, so the latencies the targets compare are measured side by side. The
   steps named by `--bracket` take their ratio against the ceiling re-measured right
   before and after them.

All traffic goes to 127.0.0.1. Nothing is downloaded.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
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
    step: the targets compare their latencies (4000x3000 against 500x375), and this VM's
    speed drifts by up to ~10 % between steps a minute apart. The others, size by size."""
    steps = [(1, sizes)] if 1 in concurrencies else []
    return steps + [(c, [size]) for size in sizes for c in concurrencies if c != 1]


class Command(BaseCommand):
    help = "Measure the model's raw speed and the served speed of a real gunicorn, side by side."

    def add_arguments(self, parser):
        parser.add_argument(
            "--engines",
            default="tensorflow:fp32,openvino:fp32,openvino:bf16",
            help="engine:precision, comma-separated, measured one after the other",
        )
        parser.add_argument("--concurrency", default="1,4,16,32", help="comma-separated")
        parser.add_argument("--sizes", default="500x375,4000x3000", help="JPEG sizes, WxH")
        parser.add_argument("--requests", type=int, default=240, help="per step, at most")
        parser.add_argument("--seconds", type=float, default=7.0, help="per step, at most")
        parser.add_argument("--max-batch", type=int, default=32)
        parser.add_argument("--raw-repeats", type=int, default=20)
        parser.add_argument(
            "--bracket",
            default="16,32",
            help="concurrencies whose steps (first size) get the ceiling re-measured right "
            "before and after them, for their ratio (empty: none)",
        )
        parser.add_argument(
            "--overload",
            type=int,
            default=64,
            help="concurrency of the overload step against a small queue (0: skip)",
        )
        parser.add_argument("--overload-queue", type=int, default=8, help="CLASSIFIER_MAX_QUEUE")
        add_server_env_argument(parser)

    def handle(self, *args, **options):
        concurrencies = [int(c) for c in options["concurrency"].split(",")]
        sizes = parse_sizes(options["sizes"])
        engines = [tuple(e.split(":")) for e in options["engines"].split(",")]
        bracket = {int(c) for c in options["bracket"].split(",") if c.strip()}
        started = time.monotonic()

        with tempfile.TemporaryDirectory(prefix="classifier-bench-") as tmp:
            tmp = Path(tmp)
            raws, models = self.raw_ceilings(engines, options, ir_dir=tmp / "ir")
            results = []
            for engine, precision in engines:
                model = models[f"{engine}:{precision}"]
                env = [
                    *options["server_env"],
                    f"CLASSIFIER_ENGINE={engine}",
                    f"CLASSIFIER_PRECISION={precision}",
                ]
                if engine == "openvino":  # as deployed: a saved IR, no conversion at start
                    env.append(f"CLASSIFIER_OPENVINO_IR={tmp / 'ir'}")
                server = Server(tmp / f"{engine}-{precision}", extra_env=env)
                try:
                    cold = server.start()
                    self.stdout.write(
                        f"{engine} {precision}: gunicorn cold start to ready {cold:.1f} s"
                    )
                    uploads = {size: upload(*size) for size in sizes}
                    steps: list[LoadResult] = []
                    ceiling = None  # the last re-measured one, if just measured
                    for concurrency, step_sizes in plan(sizes, concurrencies):
                        bracketed = concurrency in bracket and sizes[0] in step_sizes
                        if bracketed and ceiling is None:
                            ceiling = ceiling_now(model, options["max_batch"])
                        step = self.step(
                            server, [uploads[size] for size in step_sizes], options, concurrency
                        )
                        for result in step:
                            result.engine = f"{engine}:{precision}"
                        if bracketed:
                            after = ceiling_now(model, options["max_batch"])
                            step[0].ceilings = [ceiling, after]
                            ceiling = after
                        else:
                            ceiling = None
                        steps += step
                    # The table shows each size's steps together, in order of clients.
                    labels = [label for label, _, _ in uploads.values()]
                    steps.sort(key=lambda r: (labels.index(r.label), r.concurrency))
                    results += steps
                finally:
                    server.stop()

        self.stdout.write(self.table(results, raws))
        self.stdout.write(self.drift(results, raws))
        self.stdout.write(self.profile(results))
        self.stdout.write(self.comparison(results))
        if options["overload"]:
            self.overload(options, sizes[0], engines[0])
        self.stdout.write(f"\nBenchmark took {time.monotonic() - started:.0f} s.")

    def step(self, server, uploads, options, concurrency) -> list[LoadResult]:
        before, started = server.batching(), time.monotonic()
        results = drive(
            server.url,
            uploads,
            concurrency=concurrency,
            max_requests=max(options["requests"], concurrency * 4) * len(uploads),
            max_seconds=options["seconds"] * len(uploads),
        )
        after, elapsed = server.batching(), time.monotonic() - started
        batches = after["batches"] - before["batches"]
        images = after["images"] - before["images"]
        in_passes = after["pass_seconds"] - before["pass_seconds"]
        peak_rss = server.peak_rss_mib()
        for result in results:
            if batches:
                result.mean_batch = images / batches
                result.busy = in_passes / elapsed
                result.pass_ms_per_image = in_passes * 1000 / images
            result.peak_rss_mib = peak_rss
        labels = " and ".join(label for label, _, _ in uploads)
        self.stdout.write(f"  done {labels} c={concurrency}", ending="\r")
        return results

    def raw_ceilings(self, engines, options, *, ir_dir: Path) -> tuple[dict, dict]:
        """Each engine's compiled forward pass, in this process, on the same weights:
        its figures and the engine (kept to re-measure the ceiling around steps)."""
        from classifier import inference

        threads = settings.CLASSIFIER_THREADS or None
        reference = inference.TensorFlowEngine(weights="random", threads=threads)
        if any(engine == "openvino" for engine, _ in engines):
            inference.export_ir(reference.model, "random", ir_dir)
        raws, models = {}, {}
        for engine, precision in engines:
            if engine == "tensorflow" and precision == "fp32":
                model = reference
            elif engine == "tensorflow":
                model = inference.TensorFlowEngine(
                    weights="random", precision=precision, threads=threads
                )
            else:
                model = inference.OpenVINOEngine(
                    weights="random", precision=precision, threads=threads, ir_path=str(ir_dir)
                )
            raw = time_forward(model, options["max_batch"], options["raw_repeats"])
            raws[f"{engine}:{precision}"] = raw
            models[f"{engine}:{precision}"] = model
            self.stdout.write(
                f"Raw forward pass, {engine} {model.info.precision} (this process, no HTTP): "
                f"batch 1 {raw['b1_ms']:.1f} ms median ({1000 / raw['b1_ms']:.1f} img/s); "
                f"batch {options['max_batch']} {raw['bmax_ips']:.1f} img/s"
            )
        return raws, models

    def table(self, results: list[LoadResult], raws: dict) -> str:
        head = (
            f"{'engine':>16} {'image':>9} {'conc':>4} {'reqs':>5} {'img/s':>6} {'p50 ms':>7} "
            f"{'p90 ms':>7} {'p99 ms':>7} {'errors':>6} {'batch':>5} {'RSS MiB':>7} "
            f"{'/ceiling':>8}"
        )
        lines = ["", head, "-" * len(head)]
        for r in results:
            errors = ",".join(f"{k}:{v}" for k, v in sorted(r.errors.items())) or "0"
            batch = f"{r.mean_batch:.1f}" if r.mean_batch else "n/a"
            rss = f"{r.peak_rss_mib:.0f}" if r.peak_rss_mib else "n/a"
            ceiling = step_ceiling(r, raws)
            lines.append(
                f"{r.engine:>16} {r.label:>9} {r.concurrency:>4} {len(r.latencies):>5} "
                f"{r.throughput:>6.1f} {r.percentile(50):>7.0f} {r.percentile(90):>7.0f} "
                f"{r.percentile(99):>7.0f} {errors:>6} {batch:>5} {rss:>7} "
                f"{r.throughput / ceiling:>8.2f}"
            )
        return "\n".join(lines)

    def drift(self, results: list[LoadResult], raws: dict) -> str:
        """The ceilings re-measured around steps: how much this machine's speed moved."""
        lines = []
        for r in results:
            if r.ceilings:
                ceiling = step_ceiling(r, raws)
                where = (
                    f": model busy {r.busy:.0%} x pass {1000 / ceiling:.1f} raw / "
                    f"{r.pass_ms_per_image:.1f} served ms/img"
                    if r.busy is not None
                    else ""
                )
                lines.append(
                    f"  {r.engine} {r.label} c={r.concurrency}: "
                    f"{r.ceilings[0]:.1f} before, {r.ceilings[1]:.1f} after "
                    f"(start of run {raws[r.engine]['bmax_ips']:.1f}) -> "
                    f"{r.throughput / ceiling:.2f}{where}"
                )
        if not lines:
            return ""
        return "\n".join(
            ["", "Ceiling (batch-max img/s, no HTTP) re-measured right before and after a "
             "step; its /ceiling uses the higher.", "That ratio is about the product of how "
             "busy the server's model was (its share of the step's time in forward passes) "
             "and the raw pass time per image over the served one:", *lines]
        )  # fmt: skip

    def profile(self, results: list[LoadResult]) -> str:
        """Where one request's time goes (server-side means): alone, and at 16 clients."""
        stages = ["parse", "decode", "thumbnail", "preprocess", "queued", "inference"]
        stages += ["topk", "store"]
        head = f"{'engine':>16} {'image':>9} {'conc':>4} " + " ".join(
            f"{name:>10}" for name in [*stages, "http+json"]
        )
        lines = ["", "Per-request stages, mean ms (server-side timings_ms; http+json = "
                 "client latency - parse - service total):", head, "-" * len(head)]  # fmt: skip
        for r in results:
            if r.concurrency not in (1, 16) or not r.stage_sums:
                continue
            n = r.stage_samples
            means = [r.stage_sums.get(name, 0.0) / n for name in stages]
            rest = (sum(r.latencies) * 1000 - r.stage_sums["total"] - r.stage_sums["parse"]) / n
            lines.append(
                f"{r.engine:>16} {r.label:>9} {r.concurrency:>4} "
                + " ".join(f"{m:>10.1f}" for m in [*means, rest])
            )
        return "\n".join(lines)

    def comparison(self, results: list[LoadResult]) -> str:
        def find(engine, label, concurrency):
            for r in results:
                if (r.engine, r.label, r.concurrency) == (engine, label, concurrency):
                    return r
            return None

        lines = [""]
        for r in results:
            base = find("tensorflow:fp32", r.label, r.concurrency)
            if base is None or r.engine == "tensorflow:fp32" or r.concurrency not in (1, 16):
                continue
            lines.append(
                f"{r.engine} vs tensorflow:fp32, {r.label} c={r.concurrency}: "
                f"{r.throughput / base.throughput:.2f}x images/s, "
                f"p50 {r.percentile(50) / base.percentile(50):.2f}x"
            )
        return "\n".join(lines)

    def overload(self, options, size, engine) -> None:
        """More clients than the queue admits: expect 200s and fast 503s, nothing else."""
        queue = options["overload_queue"]
        env = [
            *options["server_env"],
            f"CLASSIFIER_MAX_QUEUE={queue}",
            f"CLASSIFIER_ENGINE={engine[0]}",
            f"CLASSIFIER_PRECISION={engine[1]}",
        ]
        with tempfile.TemporaryDirectory(prefix="classifier-bench-") as tmp:
            server = Server(Path(tmp), extra_env=env)
            try:
                server.start()
                [result] = drive(
                    server.url,
                    [upload(*size)],
                    concurrency=options["overload"],
                    max_requests=options["overload"] * 200,
                    max_seconds=options["seconds"],
                )
                ready = requests.get(f"{server.url}/readyz", timeout=10).status_code
            finally:
                server.stop()
        rejected = result.error_latencies.get(503, [])
        other = {k: v for k, v in result.errors.items() if k != 503}
        p50_503, p99_503, max_503 = (
            (np.percentile(rejected, [50, 99]) * 1000).tolist() + [max(rejected) * 1000]
            if rejected
            else [0.0, 0.0, 0.0]
        )
        self.stdout.write(
            f"\nOverload ({engine[0]} {engine[1]}): {options['overload']} clients, "
            f"CLASSIFIER_MAX_QUEUE={queue}, "
            f"{result.label}: {len(result.latencies)} x 200 ({result.throughput:.1f} img/s, "
            f"p50 {result.percentile(50):.0f} ms, p99 {result.percentile(99):.0f} ms), "
            f"{len(rejected)} x 503 (p50 {p50_503:.0f} ms, p99 {p99_503:.0f} ms, max "
            f"{max_503:.0f} ms), other errors "
            f"{other or 0}; /readyz afterwards: {ready}"
        )


def time_forward(engine, max_batch: int, repeats: int) -> dict:
    one = random_batch(1)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        engine.predict(one)
        times.append(time.perf_counter() - t)
    engine.predict(random_batch(max_batch))  # first call at this size allocates
    return {
        "b1_ms": statistics.median(times) * 1000,
        "bmax_ips": ceiling_now(engine, max_batch, rounds=max(3, repeats // 5)),
    }


def ceiling_now(engine, max_batch: int, rounds: int = 2) -> float:
    """The engine's batch-max throughput now (at the start of the run, and again around
    the `--bracket` steps while the server idles: this VM's speed drifts by up to ~10 %
    within a minute, so a step's ratio is taken against the ceiling measured around it)."""
    big = random_batch(max_batch)
    started = time.perf_counter()
    for _ in range(rounds):
        engine.predict(big)
    return rounds * max_batch / (time.perf_counter() - started)


def random_batch(size: int) -> np.ndarray:
    """Model input in the caffe range; its values do not change the forward pass's cost."""
    from classifier.inference import INPUT_SIZE

    rng = np.random.default_rng(size)
    return rng.uniform(-120, 150, (size, INPUT_SIZE, INPUT_SIZE, 3)).astype(np.float32)


def step_ceiling(result: LoadResult, raws: dict) -> float:
    """The ceiling a step's ratio is taken against: the higher of those measured around it
    (a neighbour's burst only ever slows a measurement down: one slow sample must not
    flatter the step), else the one from the start of the run."""
    if result.ceilings:
        return max(result.ceilings)
    return raws[result.engine]["bmax_ips"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """gunicorn with the shipped config, as `make run` starts it, on a loopback port."""

    def __init__(self, tmp: Path, extra_env: list[str]) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "GUNICORN_BIND": f"127.0.0.1:{self.port}",
            "CLASSIFIER_WEIGHTS": "random",
            "DJANGO_SECRET_KEY": "benchmark-only",
            "DATABASE_URL": os.environ.get("DATABASE_URL") or f"sqlite:///{tmp / 'bench.sqlite3'}",
            "GUNICORN_LOG_LEVEL": "warning",
        }
        for item in extra_env:
            name, _, value = item.partition("=")
            self.env[name] = value
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> float:
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
            cwd=settings.BASE_DIR,
            env=self.env,
            check=True,
        )
        self.log = open(self.tmp / "gunicorn.log", "w+")  # noqa: SIM115 - closed in stop()
        started = time.monotonic()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "gunicorn.conf.py",
                "--access-logfile",
                "/dev/null",
                "webapp.wsgi",
            ],  # fmt: skip
            cwd=settings.BASE_DIR,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise CommandError(f"gunicorn exited:\n{self.output()}")
            try:
                if requests.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or too busy loading the model to answer: ask again
            time.sleep(0.05)
        raise CommandError(f"gunicorn not ready after {timeout}s:\n{self.output()}")

    def batching(self) -> dict:
        return requests.get(f"{self.url}/model", timeout=10).json()["batching"]

    @property
    def pid(self) -> int:
        return self.process.pid

    def worker_pids(self) -> list[int]:
        return worker_pids(self.pid)

    def peak_rss_mib(self) -> float | None:
        """Largest VmHWM (peak resident set) among the worker processes so far."""
        peaks = [m for pid in self.worker_pids() if (m := status_mib(pid, "VmHWM")) is not None]
        return max(peaks) if peaks else None

    def rss_mib(self) -> float | None:
        """Resident memory of all worker processes now (VmRSS, summed)."""
        sizes = [m for pid in self.worker_pids() if (m := status_mib(pid, "VmRSS")) is not None]
        return sum(sizes) if sizes else None

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()[-4000:]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if hasattr(self, "log"):
            self.log.close()


def worker_pids(master_pid: int) -> list[int]:
    """gunicorn's workers: the children of its master process (Linux /proc)."""
    try:
        children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    except OSError:
        return []
    return [int(pid) for pid in children]


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
    """A photo-like JPEG (smooth gradients + sensor-like noise, quality 90) wrapped in a
    multipart body, as `count` image fields. At 4000x3000 it is 3.2 MB, like a 12 MP phone
    photo; its entropy decoding (the floor of any JPEG decode, draft mode or not) takes
    ~30 ms here."""
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
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="image"; filename="bench.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    )
    part = head.encode() + out.getvalue() + b"\r\n"
    body = part * count + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _add_stages(result: LoadResult, payload: bytes) -> None:
    try:
        timings = json.loads(payload)["timings_ms"]
    except (ValueError, KeyError):
        return
    for name, ms in timings.items():
        result.stage_sums[name] = result.stage_sums.get(name, 0.0) + ms
    result.stage_samples += 1


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
