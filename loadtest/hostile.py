"""Attacks an anonymous client can make on a public address, against the real server, and
what each costs everyone else: `manage.py hostile [--only NAME ...]`.

Starts gunicorn with the shipped gunicorn.conf.py and random weights on a loopback port (a
throwaway SQLite database, or DATABASE_URL), then runs each attack (`attacks`) from
127.0.0.2 while an honest client on 127.0.0.3 classifies a 12 MP phone photo in a loop and
a probe on 127.0.0.4 polls /healthz (each its own client for the server's limits). Per
attack it prints: what the attack's requests got, the worker's peak RSS growth over its
RSS before (peak reset with /proc/PID/clear_refs), the slowest /healthz, and the honest
requests' statuses and how many were stored. Every loop is bounded in requests and time,
and all traffic goes to 127.0.0.0/8.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import Failed
from .attacks import ATTACKS, HONEST, PROBE, ms_since, request
from .load import multipart_jpeg
from .server import add_server_env_argument, command_server

HELP = "Run attacks on a real gunicorn and print what each cost an honest client beside it."


def add_arguments(parser) -> None:
    parser.add_argument("--only", nargs="*", choices=list(ATTACKS), default=list(ATTACKS))
    add_server_env_argument(parser)


@dataclass
class Watch:
    """The honest client and the probe, running while an attack does."""

    port: int
    statuses: Counter = field(default_factory=Counter)
    stored: int = 0
    slowest_probe_ms: float = 0.0
    slowest_honest_ms: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, seconds: float) -> list[threading.Thread]:
        body, content_type = multipart_jpeg(4000, 3000)
        threads = [
            threading.Thread(target=self._honest, args=(body, content_type, seconds)),
            threading.Thread(target=self._probe, args=(seconds,)),
        ]
        for thread in threads:
            thread.start()
        return threads

    def _honest(self, body: bytes, content_type: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        for _ in range(1000):
            if self.stop.is_set() or time.monotonic() > deadline:
                return
            started = time.monotonic()
            status, answer = request(
                self.port, HONEST, "POST", "/predict", body, {"Content-Type": content_type}
            )
            self.slowest_honest_ms = max(self.slowest_honest_ms, ms_since(started))
            self.statuses[status] += 1
            if status == 200 and json.loads(answer).get("stored"):
                self.stored += 1
            time.sleep(0.3)

    def _probe(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        for _ in range(10_000):
            if self.stop.is_set() or time.monotonic() > deadline:
                return
            started = time.monotonic()
            request(self.port, PROBE, "GET", "/healthz", timeout=30)
            self.slowest_probe_ms = max(self.slowest_probe_ms, ms_since(started))
            time.sleep(0.2)


def reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run(options: dict, out) -> None:
    """Every attack in `options["only"]`, one after the other, each reported to `out` as it
    ends and in a table at the end; Failed if the server logged a traceback."""
    folder = Path(tempfile.mkdtemp(prefix="hostile-"))
    server = command_server(folder, options["server_env"])
    out.write(f"starting gunicorn (log: {server.log_path})")
    rows = []
    try:
        server.boot()
        request(server.port, HONEST, "POST", "/predict", *_warm_up())
        for name in options["only"]:
            (worker,) = server.worker_pids()
            before = server.rss_mib()
            if not reset_peak(worker):
                out.write("cannot reset the peak RSS (/proc/PID/clear_refs): growth is since start")
            watch = Watch(server.port)
            watchers = watch.run(seconds=120)
            started = time.monotonic()
            seen = ATTACKS[name](server.port)
            seconds = time.monotonic() - started
            time.sleep(1)  # the honest request in flight finishes
            watch.stop.set()
            for thread in watchers:
                thread.join(150)
            growth = (server.peak_rss_mib() or 0) - (before or 0)
            rows.append((name, seconds, seen, growth, watch))
            out.write(
                f"{name}: {seconds:.0f} s; attack {dict(seen)}; worker peak RSS +{growth:.0f} MiB "
                f"(from {before:.0f}); slowest /healthz {watch.slowest_probe_ms:.0f} ms; honest "
                f"12 MP {dict(watch.statuses)}, stored {watch.stored}, slowest "
                f"{watch.slowest_honest_ms:.0f} ms"
            )
    finally:
        log = server.stop()
    out.write("")
    out.write("| attack | its answers | worker peak RSS | slowest /healthz | honest 12 MP photo |")
    out.write("|---|---|---|---|---|")
    for name, seconds, seen, growth, watch in rows:
        answers = ", ".join(f"{status}: {count}" for status, count in sorted(seen.items(), key=str))
        honest = ", ".join(f"{status}: {count}" for status, count in sorted(watch.statuses.items()))
        out.write(
            f"| {name} ({seconds:.0f} s) | {answers} | +{growth:.0f} MiB | "
            f"{watch.slowest_probe_ms:.0f} ms | {honest}; stored {watch.stored}; slowest "
            f"{watch.slowest_honest_ms:.0f} ms |"
        )
    errors = log.count("Traceback")
    out.write(f"\ntracebacks in the server log: {errors}")
    if errors:
        raise Failed(f"the server logged {errors} tracebacks")


def _warm_up() -> tuple[bytes, dict[str, str]]:
    body, content_type = multipart_jpeg(500, 375)
    return body, {"Content-Type": content_type}
