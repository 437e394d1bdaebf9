"""Closed-loop load on a server, as the benchmark, the soak and the serving tests send it.

`drive` sends requests (`Payload`s: multipart uploads of generated photo-like JPEGs, or v2
inference requests) from many clients, each sending its next when its previous returns,
and tallies what each upload got into a `LoadResult`. http.client, not requests: the
clients share the server's cores, so each request should cost them as little as it can.
"""

from __future__ import annotations

import functools
import http.client
import io
import json
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
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


def connect(url: str, timeout: float = 60) -> http.client.HTTPConnection:
    host, port = url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=timeout)


def post(
    connection: http.client.HTTPConnection,
    body: bytes,
    headers: dict[str, str],
    path: str = "/predict",
) -> tuple[int, bytes]:
    """POST on a kept-alive connection: (status, body), or (0, b"") if the connection
    failed (it is closed, and http.client reopens it for the next request)."""
    try:
        connection.request("POST", path, body=body, headers=headers)
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


@dataclass(frozen=True)
class Payload:
    """One request `drive` sends: the label of its results, its body, where it goes."""

    label: str
    body: bytes
    content_type: str
    path: str = "/predict"
    headers: tuple[tuple[str, str], ...] = ()


def upload(width: int, height: int) -> Payload:
    """A multipart POST /predict of one generated JPEG (`photo_jpeg`)."""
    return Payload(f"{width}x{height}", *multipart_jpeg(width, height))


def v2_request(label: str, name: str, datatype: str, shape: list[int], data: bytes) -> Payload:
    """An Open Inference Protocol inference request with one input and the probabilities
    out, both as binary tensor data, as Triton's client sends them."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": shape,
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return Payload(
        label,
        header + data,
        "application/octet-stream",
        path="/v2/models/resnet50/infer",
        headers=(("Inference-Header-Content-Length", str(len(header))),),
    )


def v2_image(width: int, height: int) -> Payload:
    """The `photo_jpeg` as the v2 `image` input (BYTES: 4-byte length, then the file)."""
    data = photo_jpeg(width, height)
    return v2_request("v2 image", "image", "BYTES", [1], struct.pack("<I", len(data)) + data)


def v2_pixels(width: int, height: int) -> Payload:
    """The `photo_jpeg` decoded and preprocessed by the client, as the v2 `pixels` input."""
    from classifier.images import decode_image  # the server's own decoding: the same tensor
    from classifier.model import preprocess

    image = decode_image(photo_jpeg(width, height), max_bytes=1 << 30, max_pixels=1 << 30)
    tensor = preprocess(image.pixels[np.newaxis]).astype("<f4")
    return v2_request("v2 pixels", "pixels", "FP32", list(tensor.shape), tensor.tobytes())


def drive(
    url: str,
    uploads: list[Payload],
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
    results = [LoadResult(label=p.label, concurrency=concurrency) for p in uploads]
    requests_ = [
        (
            p.body,
            {"Content-Type": p.content_type, "Content-Length": str(len(p.body)), **dict(p.headers)},
            p.path,
        )
        for p in uploads
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
