"""The attacks of `manage.py hostile`, each from 127.0.0.2 against a server's loopback port,
each bounded in requests and time; each returns what its requests got (status counts).
`request` sends one request from a chosen loopback address: the server's per-client
limits see each address as its own client."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import socket
import time
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from .load import multipart_jpeg

ATTACKER, HONEST, PROBE = "127.0.0.2", "127.0.0.3", "127.0.0.4"


def ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000


def request(
    port: int,
    source: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 120,
) -> tuple[int | str, bytes]:
    """One request from the loopback address `source`: (status, body) or (error, b"")."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=timeout, source_address=(source, 0)
    )
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__, b""
    finally:
        connection.close()


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def multipart(files: list[bytes], name: str = "x") -> tuple[bytes, dict[str, str]]:
    boundary = "hostile0boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}{i}"'
        f"\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
        for i, data in enumerate(files)
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def in_parallel(count: int, send: Callable[[int], tuple[int | str, bytes]]) -> Counter:
    with ThreadPoolExecutor(count) as pool:
        return Counter(status for status, _ in pool.map(send, range(count)))


def json_bombs(port: int) -> Counter:
    """Four 32 MB JSON bodies of empty objects beside one image, at once."""
    pad = b",".join([b"{}"] * ((32 * 2**20 - 100) // 3))
    body = b'{"images":["AA=="],"pad":[' + pad + b"]}"
    headers = {"Content-Type": "application/json"}
    return in_parallel(4, lambda _: request(port, ATTACKER, "POST", "/predict", body, headers))


def gzip_bombs(port: int) -> Counter:
    """Four ~1 MB gzip bodies (Content-Encoding: gzip) that expand to 1 GiB of JSON
    whitespace each, at once."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    spaces = b" " * 2**20
    body = compressor.compress(b"{") + b"".join(compressor.compress(spaces) for _ in range(1024))
    body += compressor.flush()
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    return in_parallel(4, lambda _: request(port, ATTACKER, "POST", "/predict", body, headers))


def progressive_jpegs(port: int) -> Counter:
    """Eight 40000x1000 progressive 4:4:4 JPEGs (687 kB each), one per request, at once."""
    data = encoded(Image.new("RGB", (40000, 1000)), "JPEG", progressive=True, subsampling=0)
    body, headers = multipart([data])
    return in_parallel(8, lambda _: request(port, ATTACKER, "POST", "/predict", body, headers))


def webp_flood(port: int) -> Counter:
    """Two connections posting eight 40 MP lossless RGBA WebPs (1.6 kB each) per request,
    in a loop for 20 s (500 requests each at most)."""
    data = encoded(Image.new("RGBA", (8000, 5000), (10, 20, 30, 128)), "WEBP", lossless=True)
    return _flood(port, multipart([data] * 8), seconds=20)


def png_flood(port: int) -> Counter:
    """Two connections posting eight 20 MP RGBA PNGs per request (each within one client's
    share of the decode budget) in a loop for 20 s."""
    rgba = Image.new("RGBA", (5000, 4000), (10, 200, 30, 128))
    return _flood(port, multipart([encoded(rgba, "PNG")] * 8), seconds=20)


def _flood(port: int, payload: tuple[bytes, dict[str, str]], seconds: float) -> Counter:
    body, headers = payload
    deadline = time.monotonic() + seconds

    def loop(_: int) -> tuple[Counter, bytes]:
        seen = Counter()
        for _ in range(500):
            if time.monotonic() > deadline:
                break
            status, _answer = request(port, ATTACKER, "POST", "/predict", body, headers)
            seen[status] += 1
        return seen, b""

    with ThreadPoolExecutor(2) as pool:
        return sum((seen for seen, _ in pool.map(loop, range(2))), Counter())


def slow_clients(port: int) -> Counter:
    """120 connections dribbling a request a byte every 5 s for 45 s: half in the headers,
    half in a body."""
    starts = [
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ",
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n",
    ]
    sockets = []
    for i in range(120):
        sock = socket.create_connection(("127.0.0.1", port), source_address=(ATTACKER, 0))
        sock.sendall(starts[i % 2])
        sock.setblocking(False)
        sockets.append(sock)
    seen = Counter()
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        time.sleep(5)
        for sock in sockets:
            try:
                sock.send(b"a")
            except BlockingIOError:
                pass
            except OSError:
                seen["closed by the server"] += 1
    for sock in sockets:
        sock.close()
    seen["held 45 s"] = 120 - sum(seen.values())
    return seen


def slow_phones(port: int) -> Counter:
    """64 honest phones, one starting every 0.25 s, each uploading a 3.2 MB photo at
    1.5 Mbit/s (~17 s): not an attack, but what gthread's threads were held by. Counts
    their answers, and how long the slowest took."""
    body, content_type = multipart_jpeg(4000, 3000)
    rate = 1.5e6 / 8  # bytes a second
    piece = 16 * 1024

    def upload(phone: int) -> tuple[str, bytes]:
        time.sleep(phone * 0.25)
        started = time.monotonic()
        sock = socket.create_connection(("127.0.0.1", port), source_address=(HONEST, 0))
        sock.settimeout(180)
        head = (
            f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        sock.sendall(head)
        for offset in range(0, len(body), piece):
            sock.sendall(body[offset : offset + piece])
            time.sleep(piece / rate)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
        sock.close()
        status = answer[9:12].decode() or "no answer"
        stored = b'"stored": true' in answer
        return f"{status}{' stored' if stored else ''} in {time.monotonic() - started:.0f} s", b""

    with ThreadPoolExecutor(64) as pool:
        outcomes = [status for status, _ in pool.map(upload, range(64))]
    seen = Counter(outcome.split(" in ")[0] for outcome in outcomes)
    seen[f"slowest {max(int(o.split(' in ')[1][:-2]) for o in outcomes)} s"] = 1
    return seen


def poisoned_tensors(port: int) -> Counter:
    """A v2 `pixels` tensor of 3e38 (finite, so well-formed) beside six honest /predict
    requests, three times."""
    binary = np.full((1, 224, 224, 3), 3e38, "<f4").tobytes()
    tensor = {
        "name": "pixels",
        "datatype": "FP32",
        "shape": [1, 224, 224, 3],
        "parameters": {"binary_data_size": len(binary)},
    }
    header = json.dumps({"inputs": [tensor]}).encode()
    poison_headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    photo, content_type = multipart_jpeg(500, 375)
    seen = Counter()
    for _ in range(3):

        def send(i: int):
            if i == 0:
                return request(
                    port, ATTACKER, "POST", "/v2/models/resnet50/infer", header + binary,
                    poison_headers,
                )  # fmt: skip
            return request(port, HONEST, "POST", "/predict", photo, {"Content-Type": content_type})

        with ThreadPoolExecutor(7) as pool:
            answers = list(pool.map(send, range(7)))
        seen[f"poison {answers[0][0]}"] += 1
        for status, body in answers[1:]:
            stored = status == 200 and json.loads(body).get("stored")
            seen[f"beside it {status} stored" if stored else f"beside it {status} NOT stored"] += 1
    return seen


ATTACKS = {
    "json_bombs": json_bombs,
    "gzip_bombs": gzip_bombs,
    "progressive_jpegs": progressive_jpegs,
    "webp_flood": webp_flood,
    "png_flood": png_flood,
    "slow_clients": slow_clients,
    "slow_phones": slow_phones,
    "poisoned_tensors": poisoned_tensors,
}
