"""The load generator (loadtest.load): what the benchmark's table reports must be
what each upload got.

Against a small stand-in HTTP server on loopback (the real server's speed is the
benchmark's business, not a test's): it answers each POST /predict with the size of the
body it received, as a stage timing, after a delay that grows with that size."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from loadtest.load import Payload, drive, plan


class _Predict(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the benchmark's clients use it
    disable_nagle_algorithm = True  # headers and body go out apart: no 40 ms stalls
    received: list[int]

    def do_POST(self):  # noqa: N802 - http.server's name
        size = int(self.headers["Content-Length"])
        self.rfile.read(size)
        self.received.append(size)
        time.sleep(size / 50_000)  # 1 ms per 50 bytes
        body = json.dumps({"timings_ms": {"parse": 0.1, "total": 1.0, "decode": size}})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def stand_in():
    handler = type("Handler", (_Predict,), {"received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.received
    server.shutdown()
    server.server_close()


def test_one_client_sends_the_sizes_in_turn_and_each_gets_its_own_row(stand_in):
    url, received = stand_in
    small = Payload("500x375", b"s" * 200, "image/jpeg")
    large = Payload("4000x3000", b"L" * 2000, "image/jpeg")

    results = drive(url, [small, large], concurrency=1, max_requests=20, max_seconds=30)

    # Strictly alternating: a warm-up request of each, then 20 more (21 if one was sent
    # while the window opened: it completed in it, so it counts).
    assert len(received) in (22, 23)
    assert set(received[::2]) == {200}
    assert set(received[1::2]) == {2000}
    assert [r.label for r in results] == ["500x375", "4000x3000"]
    assert sorted(len(r.latencies) for r in results) in ([10, 10], [10, 11])
    assert all(not r.errors for r in results)
    # Each row's stages come from its own answers only.
    assert [r.stage_sums["decode"] / r.stage_samples for r in results] == [200, 2000]
    # The larger upload took ~40 ms a request, the smaller ~4 ms: so did their rows.
    assert results[1].percentile(50) > 4 * results[0].percentile(50)
    # The step's time is shared out by the time each took: the small one's throughput
    # is not diluted by the large one's requests.
    assert results[0].throughput > 4 * results[1].throughput
    assert sum(r.elapsed for r in results) == pytest.approx(
        sum(map(sum, (r.latencies for r in results))), rel=0.5
    )


def test_several_clients_start_on_different_sizes(stand_in):
    url, received = stand_in
    uploads = [Payload("a", b"a" * 100, "image/jpeg"), Payload("b", b"b" * 300, "image/jpeg")]

    results = drive(url, uploads, concurrency=2, max_requests=8, max_seconds=30)

    assert sorted(received[:2]) == [100, 300]  # the warm-up: one of each at once
    assert 8 <= sum(len(r.latencies) for r in results) <= 8 + 2
    assert all(len(r.latencies) >= 3 for r in results)


def test_answers_that_come_after_the_window_closes_do_not_count(stand_in):
    url, received = stand_in
    slow = Payload("slow", b"x" * 10_000, "image/jpeg")  # 200 ms a request

    [result] = drive(url, [slow], concurrency=2, max_requests=100, max_seconds=0.5)

    # The two requests in flight at the close were answered, but are not in the row, and
    # the row's time is the window's, not until the last answer came.
    warm_ups = 2
    assert len(received) == warm_ups + len(result.latencies) + 2
    assert result.elapsed == pytest.approx(0.5)
    assert result.throughput == pytest.approx(2 / 0.2, rel=0.45)


def test_sizes_are_measured_side_by_side_at_one_client_only():
    small, large = (500, 375), (4000, 3000)

    steps = plan([small, large], [1, 4, 16, 32])

    assert steps == [
        (1, [small, large]),
        (4, [small]), (16, [small]), (32, [small]),
        (4, [large]), (16, [large]), (32, [large]),
    ]  # fmt: skip
    assert plan([small, large], [16]) == [(16, [small]), (16, [large])]
