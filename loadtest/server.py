"""A real gunicorn on loopback, with the shipped gunicorn.conf.py and random weights, as
`make run` starts it: for the load tools and the tests that drive the real server. Its
workers' memory and CPU time come from Linux's /proc."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from django.conf import settings

from . import Failed


def add_server_env_argument(parser) -> None:
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the server (repeatable)",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerFailed(Failed):
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
