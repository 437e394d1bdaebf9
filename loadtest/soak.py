"""`python manage.py soak`: sustained load on the real server, for what short tests miss.

Starts gunicorn with the shipped gunicorn.conf.py and random weights on a loopback port
(a throwaway SQLite database, or DATABASE_URL), runs its largest batch once (see
`prime`), sends `--requests` uploads of generated JPEGs of a few sizes from
`--concurrency` closed-loop clients (bounded by `--seconds`), then checks what a long run
reveals: any 5xx or dropped connection, worker memory that keeps growing after the
warm-up, a worker that restarted, and answers without exactly their history row. Exits
non-zero if any of these is found.

All traffic goes to 127.0.0.1. Nothing is downloaded.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests
from django.conf import settings

from . import Failed
from .load import LoadResult, connect, multipart_jpeg, parse_sizes, post
from .server import Server, add_server_env_argument, command_server

RSS_EVERY = 250

# Run in a `manage.py shell` with the server's environment, so it reads the server's own
# database whichever it is: rows created since the start, and those matching an answer.
COUNT_ROWS = """
import json, sys
from classifier.models import Prediction
run = json.load(sys.stdin)
rows = Prediction.objects.filter(pk__in=[answer[0] for answer in run["answers"]])
found = {pk: [sha256, label] for pk, sha256, label in rows.values_list("pk", "sha256", "top_label")}
print(json.dumps({
    "stored": Prediction.objects.filter(created_at__gte=run["since"]).count(),
    "matching": sum(found.get(pk) == [sha256, label] for pk, sha256, label in run["answers"]),
}))
"""


@dataclass
class Soak:
    result: LoadResult
    # (prediction_id, sha256, top label) of each image in a 200 answer
    answers: list[tuple[int | None, str, str]] = field(default_factory=list)
    # Worker RSS and pids once `--warmup` requests are answered, and when the last request
    # is sent: both under full load, so that transient buffers count in both or neither.
    warm_rss_mib: float | None = None
    warm_pids: list[int] = field(default_factory=list)
    end_rss_mib: float | None = None
    end_pids: list[int] = field(default_factory=list)
    # Every RSS_EVERY requests: a leak climbs steadily, a warm-up levels off.
    rss_trend: list[float | None] = field(default_factory=list)


HELP = "Sustained, bounded load on a real gunicorn: 5xx, memory growth, history rows."


def add_arguments(parser) -> None:
    parser.add_argument("--requests", type=int, default=2000, help="in all")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=900.0, help="cap on the load")
    parser.add_argument(
        "--warmup", type=int, default=200, help="requests before the first RSS reading"
    )
    parser.add_argument("--max-rss-growth", type=float, default=100.0, help="MiB, warm-up to end")
    parser.add_argument(
        "--sizes", default="320x240,500x375,1280x960,4000x3000", help="JPEG sizes, WxH"
    )
    add_server_env_argument(parser)


def run(options: dict, out) -> None:
    """The soak with `options` (as `add_arguments` parses them), printed to `out`; Failed
    if it found any of the faults it looks for."""
    Soaker(out).run(**options)


class Soaker:
    def __init__(self, out) -> None:
        self.out = out

    def run(self, **options):
        if not 0 < options["warmup"] < options["requests"]:
            raise Failed("--warmup must be between 0 and --requests")
        sizes = parse_sizes(options["sizes"])
        bodies = [multipart_jpeg(width, height) for width, height in sizes]
        with tempfile.TemporaryDirectory(prefix="classifier-soak-") as tmp:
            server = command_server(Path(tmp), options["server_env"])
            try:
                cold = server.boot()
                self.out.write(
                    f"gunicorn ready in {cold:.1f} s; {options['requests']} requests at "
                    f"concurrency {options['concurrency']}, JPEGs {options['sizes']}"
                )
                largest = self.prime(server, min(sizes, key=lambda size: size[0] * size[1]))
                self.out.write(f"Primed: largest batch {largest}")
                since = datetime.datetime.now(datetime.UTC)
                soak = self.load(server, bodies, options)
                if soak.end_rss_mib is None:  # stopped by --seconds
                    soak.end_rss_mib, soak.end_pids = server.rss_mib(), server.worker_pids()
                rows = count_rows(server, since, soak.answers)
            finally:
                server.stop()
        failures = self.report(soak, rows, options)
        if failures:
            raise Failed("Soak failed: " + "; ".join(failures))
        self.out.write("Soak passed.")

    def prime(self, server: Server, size: tuple[int, int], rounds: int = 3) -> int:
        """Run the server's largest batch before measuring; return the largest batch seen.

        The worker's memory follows the largest batch it has run (and stays flat when that
        batch repeats), and under closed-loop load a new largest batch may come late, long
        after the warm-up: its growth would read as a leak. Small images, so that the
        requests decode within the batcher's wait and share one pass. Not counted in the
        soak.
        """
        info = requests.get(f"{server.url}/model", timeout=10).json()
        per_request, max_batch = info["limits"]["max_images"], info["batching"]["max_batch"]
        clients = -(-max_batch // per_request)
        body, content_type = multipart_jpeg(*size, count=per_request)
        headers = {"Content-Type": content_type, "Content-Length": str(len(body))}

        def batch_size(_) -> int:
            connection = connect(server.url)
            status, payload = post(connection, body, headers)
            connection.close()
            return json.loads(payload)["batch_size"] if status == 200 else 0

        largest = 0
        with ThreadPoolExecutor(clients) as pool:
            for _ in range(rounds):
                largest = max(largest, *pool.map(batch_size, range(clients)))
                if largest >= max_batch:
                    break
        return largest

    def load(self, server: Server, bodies: list[tuple[bytes, str]], options) -> Soak:
        """Closed loop: each client sends its next request when the previous one returns,
        cycling through the bodies. Bounded by `--requests` and `--seconds`."""
        soak = Soak(LoadResult(label="soak", concurrency=options["concurrency"]))
        lock = threading.Lock()
        sent = done = 0
        deadline = time.monotonic() + options["seconds"]

        def client():
            nonlocal sent, done
            connection = connect(server.url)
            while True:
                with lock:
                    if sent >= options["requests"] or time.monotonic() >= deadline:
                        break
                    body, content_type = bodies[sent % len(bodies)]
                    sent += 1
                    if sent == options["requests"]:
                        soak.end_rss_mib, soak.end_pids = server.rss_mib(), server.worker_pids()
                headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
                started = time.perf_counter()
                status, payload = post(connection, body, headers)
                took = time.perf_counter() - started
                answers = _answers(payload) if status == 200 else []
                with lock:
                    done += 1
                    if status == 200:
                        soak.result.latencies.append(took)
                        soak.result.images += len(answers)
                        soak.answers.extend(answers)
                    else:
                        soak.result.errors[status] = soak.result.errors.get(status, 0) + 1
                    if done == options["warmup"]:
                        soak.warm_rss_mib, soak.warm_pids = server.rss_mib(), server.worker_pids()
                    if done % RSS_EVERY == 0:
                        soak.rss_trend.append(server.rss_mib())
            connection.close()

        started = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(options["concurrency"])]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        soak.result.elapsed = time.perf_counter() - started
        return soak

    def report(self, soak: Soak, rows: dict[str, int], options) -> list[str]:
        """Print the run; return what failed."""
        result = soak.result
        total = len(result.latencies) + sum(result.errors.values())
        statuses = {200: len(result.latencies), **result.errors}
        by_status = ", ".join(
            f"{'connection error' if s == 0 else s}: {n}" for s, n in sorted(statuses.items())
        )
        server_errors = sum(n for s, n in result.errors.items() if s >= 500)
        dropped = result.errors.get(0, 0)
        self.out.write(
            f"{total} requests in {result.elapsed:.1f} s ({total / result.elapsed:.1f}/s)\n"
            f"Requests by status: {by_status}\n"
            f"5xx: {server_errors}; connection errors: {dropped}\n"
            f"Latency of 200s: p50 {result.percentile(50):.0f} ms, "
            f"p99 {result.percentile(99):.0f} ms"
        )
        failures = []
        if server_errors:
            failures.append(f"{server_errors} responses were 5xx")
        if dropped:
            failures.append(f"{dropped} requests got no answer")
        if total < options["requests"]:
            self.out.write(f"Stopped by --seconds after {total} requests")

        end_rss = soak.end_rss_mib
        if soak.warm_rss_mib is None or end_rss is None:
            self.out.write("Worker RSS: not measured (no worker, or the warm-up never ended)")
            failures.append("worker RSS not measured")
        else:
            growth = end_rss - soak.warm_rss_mib
            self.out.write(
                f"Worker RSS: {soak.warm_rss_mib:.1f} MiB after {options['warmup']} requests, "
                f"{end_rss:.1f} MiB at the end: {growth:+.1f} MiB "
                f"(limit {options['max_rss_growth']:g})"
            )
            if soak.rss_trend:
                trend = " ".join("-" if m is None else f"{m:.0f}" for m in soak.rss_trend)
                self.out.write(f"Worker RSS every {RSS_EVERY} requests, MiB: {trend}")
            if growth >= options["max_rss_growth"]:
                failures.append(f"worker RSS grew by {growth:.1f} MiB")
        if soak.warm_pids != soak.end_pids:
            self.out.write(f"Worker pids: {soak.warm_pids} after warm-up, {soak.end_pids} at end")
            failures.append("the worker restarted during the soak")

        self.out.write(
            f"Rows stored: {rows['stored']} for {result.images} images in 200 responses "
            f"({rows['matching']} match their answer's id, sha256 and top label)"
        )
        if not rows["stored"] == rows["matching"] == result.images:
            failures.append(
                f"{rows['stored']} rows stored, {rows['matching']} matching, "
                f"for {result.images} images answered"
            )
        return failures


def _answers(payload: bytes) -> list[tuple[int | None, str, str]]:
    results = json.loads(payload)["results"]
    return [(r["prediction_id"], r["sha256"], r["predictions"][0]["label"]) for r in results]


def count_rows(server: Server, since: datetime.datetime, answers: list) -> dict[str, int]:
    """Rows the server stored since `since`, and how many match an answer (see COUNT_ROWS)."""
    completed = subprocess.run(  # noqa: S603 - this file's own script, no user input
        [sys.executable, "manage.py", "shell", "-v", "0", "-c", COUNT_ROWS],
        cwd=settings.BASE_DIR,
        env=server.env,
        input=json.dumps({"since": since.isoformat(), "answers": answers}),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if completed.returncode:
        raise Failed(f"Could not count the stored rows:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])
