"""Faults on the real server (gunicorn with the shipped config, random weights, the test
database): a worker killed mid-request, SIGTERM under load, and the history under
concurrency. What is asserted is what a client or an operator would see. Over 300 lines:
the client and the fault helpers are shared by its tests and by no other module."""

import contextlib
import hashlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests
from urllib3 import encode_multipart_formdata

from classifier.models import Prediction
from loadtest.load import connect

from . import imagegen
from .helpers import wait_until

GRACEFUL_TIMEOUT = 25  # gunicorn.conf.py: GUNICORN_GRACEFUL_TIMEOUT's default


@dataclass
class Outcome:
    started: float
    ended: float
    status: int | str  # the HTTP status, or the name of the connection error
    body: dict | None  # the JSON answer, if it was JSON


def multipart_body(*images: bytes) -> tuple[bytes, dict[str, str]]:
    """A multipart body with one `image` field per image, as `curl -F image=@...` sends."""
    body, content_type = encode_multipart_formdata(
        [("image", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    )
    return body, {"Content-Type": content_type}


def send(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int | str, dict | None]:
    """One request as a client sees it: (status, JSON body or None), or (error name, None)."""
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        payload = response.read()
    except (OSError, http.client.HTTPException) as exc:
        connection.close()
        return type(exc).__name__, None
    is_json = response.getheader("Content-Type") == "application/json"
    return response.status, json.loads(payload) if is_json else None


def post_once(url: str, images: list[bytes]) -> tuple[int | str, dict | None]:
    connection = connect(url, timeout=60)
    try:
        return send(connection, "POST", "/predict", *multipart_body(*images))
    finally:
        connection.close()


def closed_loop(
    url: str, images: list[bytes], clients: int, fault: threading.Event, attempts: int = 60
) -> tuple[list[Outcome], list[threading.Thread]]:
    """`clients` clients on kept-alive connections, each sending its next request when the
    previous one returns, until it has made one attempt after `fault` was set (or
    `attempts` in all)."""
    body, headers = multipart_body(*images)
    outcomes: list[Outcome] = []

    def client():
        connection = connect(url, timeout=30)
        for _ in range(attempts):
            after_fault = fault.is_set()
            started = time.monotonic()
            status, answer = send(connection, "POST", "/predict", body, headers)
            outcomes.append(Outcome(started, time.monotonic(), status, answer))
            if after_fault:
                break
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    return outcomes, threads


def join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a client hung"


def answered(outcomes: list[Outcome]) -> int:
    return sum(o.status == 200 for o in outcomes)


def error_code(body: dict | None) -> str | None:
    return body.get("error", {}).get("code") if body else None


@pytest.mark.timeout(300)
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_request_is_replaced_and_the_next_requests_succeed(gunicorn):
    server = gunicorn()
    url = server.url
    [worker] = server.worker_pids()
    fault = threading.Event()
    outcomes, threads = closed_loop(url, [imagegen.jpeg(1, (640, 480))], 8, fault)
    wait_until(lambda: answered(outcomes) >= 16, 90, "steady load", poll=0.05)
    fault.set()
    os.kill(worker, signal.SIGKILL)
    killed = time.monotonic()
    join(threads)
    new = wait_until(
        lambda: [p for p in server.worker_pids() if p != worker], 30, "a new worker", poll=0.05
    )
    seen = server.wait_ready()
    later = [post_once(url, [imagegen.jpeg(i, (400, 300))]) for i in range(4)]
    master_alive = server.process.poll() is None
    workers = server.worker_pids()
    log = server.stop()

    in_flight = [o for o in outcomes if o.started < killed < o.ended]
    during_restart = [o for o in outcomes if o.started > killed]
    assert any(isinstance(o.status, str) for o in in_flight), "no request was cut off mid-way"
    assert all(o.status == 200 for o in outcomes if o.ended < killed)
    # While the new worker loads its model, new connections get the documented 503, never
    # a 500 or a hang; a request sent on a connection to the dead worker fails at once.
    restart = {(o.status, error_code(o.body)) for o in during_restart}
    assert (503, "model_not_ready") in restart
    assert all(code == "model_not_ready" or isinstance(status, str) for status, code in restart)
    assert master_alive
    assert workers == new, "one worker again, the killed one reaped"
    assert f"Worker (pid:{worker}) was sent SIGKILL" in log
    assert seen[-1] == 200
    assert [status for status, _ in later] == [200] * 4
    ids = [body["results"][0]["prediction_id"] for _, body in later]
    assert Prediction.objects.filter(pk__in=ids).count() == 4


@pytest.mark.timeout(300)
@pytest.mark.django_db(transaction=True)
def test_sigterm_under_load_finishes_in_flight_requests_and_refuses_new_ones(gunicorn):
    server = gunicorn()
    url = server.url
    fault = threading.Event()
    outcomes, threads = closed_loop(url, [imagegen.jpeg(2, (640, 480))], 16, fault)
    wait_until(lambda: answered(outcomes) >= 32, 120, "steady load", poll=0.05)
    # A load balancer's health check on a kept-alive connection.
    kept_alive = connect(url, timeout=5)
    assert send(kept_alive, "GET", "/readyz")[0] == 200
    signalled = time.monotonic()
    fault.set()
    server.process.send_signal(signal.SIGTERM)

    def fresh_probe():
        # A fresh connection, as a load balancer's health check or a new client makes it.
        connection = connect(url, timeout=5)
        status, _ = send(connection, "GET", "/readyz")
        connection.close()
        return status

    # The worker stops accepting once it has the signal: poll for that, not a fixed wait.
    probe = wait_until(
        lambda: (status := fresh_probe()) == "ConnectionRefusedError" and status,
        10,
        "a refused connection",
        poll=0.05,
    )
    kept_alive_probe = send(kept_alive, "GET", "/readyz")
    kept_alive.close()
    draining = server.process.poll() is None
    returncode = server.process.wait(GRACEFUL_TIMEOUT + 10)
    exited_after = time.monotonic() - signalled
    join(threads)
    log = server.stop()

    assert returncode == 0
    assert exited_after < GRACEFUL_TIMEOUT
    in_flight = [o for o in outcomes if o.started < signalled < o.ended]
    assert in_flight, "no request was in flight at SIGTERM"
    before = [o.status for o in outcomes if o.started < signalled]
    assert before == [200] * len(before), "requests sent before SIGTERM must all be answered"
    # New work is refused cleanly: at once (connection refused) or with a JSON 503; a
    # request that reaches a kept-alive connection during the drain may still be served.
    unclean = [
        (o.status, o.body)
        for o in outcomes
        if o.started > signalled
        and o.status not in (200, "ConnectionRefusedError")
        and not (o.status == 503 and error_code(o.body))
    ]
    assert not unclean
    assert draining, "the probe must have run while in-flight requests were finishing"
    assert probe == "ConnectionRefusedError"
    # Or, if it still reaches the draining worker, it is told the pod is not ready.
    assert kept_alive_probe[0] in (503, "RemoteDisconnected", "ConnectionResetError")
    if kept_alive_probe[0] == 503:
        assert kept_alive_probe[1]["status"] == "draining"
    assert Prediction.objects.count() == answered(outcomes), "one row per 200, none lost"
    assert "Traceback" not in log


@pytest.mark.timeout(300)
@pytest.mark.django_db(transaction=True)
def test_a_burst_past_the_queue_gets_fast_503s_and_the_probes_still_answer(gunicorn):
    # 48 clients that never back off against 4 + 4 admitted images, with the threads the
    # shipped config gives those settings: the rest must be refused at once by the queue
    # bound, not left waiting unseen for a thread, and Kubernetes' probes must get through
    # within a probe's default timeout (1 s; the Deployment's readiness probe allows 2),
    # however busy the server is.
    server = gunicorn(CLASSIFIER_MAX_BATCH="4", CLASSIFIER_MAX_QUEUE="4")
    url = server.url
    probes = []
    stop_load = threading.Event()
    outcomes, clients = closed_loop(
        url, [imagegen.jpeg(3, (320, 240))], 48, stop_load, attempts=2000
    )
    wait_until(lambda: any(o.status == 503 for o in outcomes), 60, "a full server", poll=0.05)
    probing_until = time.monotonic() + 5
    while time.monotonic() < probing_until:
        for path in ("/readyz", "/healthz"):
            started = time.monotonic()
            status = requests.get(f"{url}{path}", timeout=10).status_code
            probes.append((path, status, time.monotonic() - started))
        time.sleep(0.1)
    stop_load.set()
    join(clients)
    log = server.stop()

    assert {status for _, status, _ in probes} == {200}
    slowest = max(took for _, _, took in probes)
    assert slowest < 1.0, f"a probe took {slowest:.2f} s"
    answered = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 503]
    assert {(o.status, error_code(o.body)) for o in refused} == {(503, "overloaded")}
    assert len(answered) + len(refused) == len(outcomes), "only 200s and 503s"
    assert answered, "the admitted requests are still served"
    assert len(refused) > len(answered), "most of the burst is refused, not queued"
    refused_in = sorted(o.ended - o.started for o in refused)
    assert refused_in[len(refused_in) // 2] < 0.25, "refused at once, not after a wait"
    assert "Traceback" not in log


@pytest.mark.timeout(300)
@pytest.mark.django_db(transaction=True)
def test_every_answer_under_concurrency_has_exactly_one_matching_row(gunicorn):
    # 48 requests at concurrency 16; every 4th has 2 images, every 4th 3, all distinct.
    batches = [
        [imagegen.jpeg(10 * i + j, (320, 240)) for j in range({1: 2, 3: 3}.get(i % 4, 1))]
        for i in range(48)
    ]
    server = gunicorn()
    with ThreadPoolExecutor(max_workers=16) as pool:
        replies = list(pool.map(lambda images: post_once(server.url, images), batches))
    server.stop()

    refused = [(status, error_code(body)) for status, body in replies if status != 200]
    assert set(refused) <= {(503, "overloaded")}, refused
    assert len(refused) <= 24, "most requests must be answered for this to mean anything"
    results = []
    for images, (status, body) in zip(batches, replies, strict=True):
        if status == 200:  # each image's own answer, in order, not a neighbour's
            sent = [(f"{j}.jpg", hashlib.sha256(data).hexdigest()) for j, data in enumerate(images)]
            assert [(r["filename"], r["sha256"]) for r in body["results"]] == sent
            results += body["results"]
    ids = [r["prediction_id"] for r in results]
    assert None not in ids
    assert len(set(ids)) == len(ids)
    assert Prediction.objects.count() == len(ids), "one row per answered image, no more"
    rows = Prediction.objects.in_bulk(ids)
    for result in results:
        row = rows[result["prediction_id"]]
        assert (row.sha256, row.filename, row.top_label) == (
            result["sha256"],
            result["filename"],
            result["predictions"][0]["label"],
        )


def stalled_clients(port: int, tls: bool) -> list[socket.socket]:
    """Clients that send part of a request and then wait: in the TLS handshake, in the
    headers, and in the body (a Content-Length larger than what comes)."""
    partial = [
        b"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"images"',
        b"GET /healthz HTTP/1.1\r\nHost: local",
    ]
    clients = []
    for data in partial:
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        if tls:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            raw = context.wrap_socket(raw, server_hostname="localhost")
        raw.sendall(data)
        clients.append(raw)
    if tls:
        handshake = socket.create_connection(("127.0.0.1", port), timeout=30)
        handshake.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello
        clients.append(handshake)
    return clients


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "tls.crt", folder / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return str(cert), str(key)


def dribbler(port: int, seconds: float) -> tuple[threading.Thread, dict]:
    """A client that sends a body one byte a second: never silent long enough for the
    client timeout, so only the body's total deadline ends it. Its answer lands in the
    dict."""
    got: dict = {}

    def run():
        raw = socket.create_connection(("127.0.0.1", port), timeout=60)
        raw.sendall(
            b"POST /predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n"
        )
        started = time.monotonic()
        raw.setblocking(False)
        answer = b""
        while time.monotonic() - started < seconds and b"}}" not in answer:
            with contextlib.suppress(BlockingIOError, OSError):
                raw.send(b" ")
            time.sleep(1)
            with contextlib.suppress(BlockingIOError):
                answer += raw.recv(4096)
        got.update(answer=answer, seconds=time.monotonic() - started)
        raw.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, got


@pytest.mark.timeout(300)
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_slow_and_stalled_clients_hold_no_request_thread(gunicorn, certificate, tls):
    # Ten times as many stalled clients (handshakes, headers, bodies) as request threads,
    # and one that dribbles its body: the probes and a classification answer at once,
    # long before any timeout could free a thread; then the stalled body gets its 408
    # after the client timeout, and the dribbler after the body's deadline.
    env = {"GUNICORN_THREADS": "2", "GUNICORN_CLIENT_TIMEOUT": "3", "GUNICORN_BODY_TIMEOUT": "6"}
    if tls:
        env.update(GUNICORN_CERTFILE=certificate[0], GUNICORN_KEYFILE=certificate[1])
    verify = certificate[0] if tls else True
    server = gunicorn(verify=verify, **env)  # https when given a certificate
    clients = [client for _ in range(10) for client in stalled_clients(server.port, tls)]
    slow, dribbled = dribbler(server.port, 20) if not tls else (None, {})
    started = time.monotonic()
    health = requests.get(f"{server.url}/healthz", timeout=20, verify=verify)
    body, headers = multipart_body(imagegen.jpeg(0))
    classified = requests.post(
        f"{server.url}/predict", data=body, headers=headers, timeout=20, verify=verify
    )
    waited = time.monotonic() - started
    # The stalled bodies get a JSON 408 once they have been silent for 3 s.
    clients[0].settimeout(10)
    answer = b""
    while b"}}" not in answer and (chunk := clients[0].recv(4096)):
        answer += chunk
    if slow is not None:
        slow.join(30)
    for client in clients:
        client.close()
    log = server.stop()
    assert health.status_code == 200
    assert classified.status_code == 200
    assert waited < 2.5, "the answers waited for a timeout to free a thread"
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"request_timeout"' in answer
    if slow is not None:
        assert dribbled["answer"].startswith(b"HTTP/1.1 408"), dribbled
        assert 5 <= dribbled["seconds"] < 12, "the body's deadline (6 s) ended it"
    assert "Internal Server Error" not in log
