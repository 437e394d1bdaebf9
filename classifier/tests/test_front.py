"""The server's front (classifier/front.py) without a server: what the ASGI side sends for
a WSGI app's answers, and how it reads bodies. Through gunicorn: test_faults.py (slow and
stalled clients) and test_serving.py."""

import asyncio
import contextlib

from django.http import HttpResponse, StreamingHttpResponse

from classifier.errors import RequestTimeout
from classifier.front import (
    FRONT_ERROR,
    STREAM_CHUNK_BYTES,
    BufferingFront,
    uploads_on_their_way,
)


def post_scope(size: int) -> dict:
    """The ASGI scope of a POST declaring a body of `size` bytes."""
    return {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "path": "/x",
        "query_string": b"",
        "headers": [(b"content-length", str(size).encode())],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }


def front_for(app, **options) -> BufferingFront:
    return BufferingFront(
        app,
        threads=2,
        max_body=options.get("max_body", 1000),
        buffer_bytes=10_000,
        body_timeout_s=options.get("body_timeout_s", 5),
        idle_timeout_s=options.get("idle_timeout_s", 5),
    )


def serve(app, *, body: bytes = b"", chunks: list[bytes] | None = None, **options) -> list:
    """The ASGI messages `app` (WSGI, behind the front) sends for one POST."""
    front = front_for(app, **options)
    pieces = list(chunks if chunks is not None else [body])
    size = options.get("declared", sum(map(len, pieces)))
    short = size > sum(map(len, pieces))  # the client stops before the end
    scope = post_scope(size)
    sent = []

    async def receive():
        if pieces:
            piece = pieces.pop(0)
            return {"type": "http.request", "body": piece, "more_body": bool(pieces) or short}
        await asyncio.sleep(3600)  # a client that stopped sending

    async def send(message):
        sent.append(message)

    asyncio.run(front(scope, receive, send))
    return sent


def headers(messages: list) -> dict[bytes, bytes]:
    return dict(messages[0]["headers"])


def test_a_response_goes_out_whole_with_its_length_and_clean_cookies():
    def app(environ, start_response):
        assert environ["wsgi.input"].read() == b"hello"
        response = HttpResponse(b'{"ok": true}', content_type="application/json")
        response.set_cookie("csrftoken", "abc")
        start_response("200 OK", [*response.items(), ("Set-Cookie", " csrftoken=abc; Path=/")])
        return [response.content]

    messages = serve(app, body=b"hello")
    assert [m["type"] for m in messages] == ["http.response.start", "http.response.body"]
    assert headers(messages)[b"content-length"] == b"12"
    assert headers(messages)[b"set-cookie"] == b"csrftoken=abc; Path=/"
    assert messages[1]["body"] == b'{"ok": true}'
    assert messages[1]["more_body"] is False


def test_a_streamed_response_goes_out_in_pieces():
    part = b"x" * (STREAM_CHUNK_BYTES // 2)

    def app(environ, start_response):
        response = StreamingHttpResponse(part for _ in range(5))
        start_response("200 OK", list(response.items()))
        return response

    messages = serve(app)
    bodies = [m for m in messages if m["type"] == "http.response.body"]
    assert len(bodies) == 3  # two full pieces, then the rest
    assert b"".join(m["body"] for m in bodies) == part * 5
    assert [m["more_body"] for m in bodies] == [True, True, False]


def test_a_body_that_stops_arriving_reaches_django_as_its_timeout():
    seen = {}

    def app(environ, start_response):
        seen["error"] = environ.get(FRONT_ERROR)
        start_response("408 Request Timeout", [("Content-Type", "application/json")])
        return [b"{}"]

    # The client sends half of what it declared, then nothing.
    messages = serve(app, chunks=[b"half"], declared=100, idle_timeout_s=0.2)
    assert isinstance(seen["error"], RequestTimeout)
    assert messages[0]["status"] == 408


def test_a_body_over_the_limit_is_not_read():
    def app(environ, start_response):
        assert environ["wsgi.input"].read() == b""
        assert environ["CONTENT_LENGTH"] == "2000"
        start_response("413 Request Entity Too Large", [])
        return [b""]

    messages = serve(app, body=b"y" * 2000, max_body=1000)
    assert messages[0]["status"] == 413


def test_an_app_that_raises_gets_a_json_500():
    def app(environ, start_response):
        raise RuntimeError("boom")

    messages = serve(app)
    assert messages[0]["status"] == 500
    assert b'"internal_error"' in messages[1]["body"]


def test_uploads_on_their_way_are_those_arriving_or_in_a_request_thread():
    # The micro-batcher reads this count: a burst of uploads is on its way before its
    # requests reach the model.
    seen = []

    def app(environ, start_response):
        seen.append(uploads_on_their_way(60))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    assert uploads_on_their_way(60) == 0
    serve(app, body=b"an image")
    serve(app, body=b"")  # nothing to read: not an upload
    assert seen == [1, 0]
    assert uploads_on_their_way(60) == 0


def test_a_streamed_answer_stops_counting_as_an_upload_once_its_view_has_returned():
    # An admin export streams for minutes after its view returned: lone requests to the
    # model must not wait for a batch companion all that time.
    seen = []

    def pieces():
        seen.append(("streaming", uploads_on_their_way(60)))
        yield b"x" * STREAM_CHUNK_BYTES
        seen.append(("streaming", uploads_on_their_way(60)))
        yield b"y"

    def app(environ, start_response):
        seen.append(("view", uploads_on_their_way(60)))
        response = StreamingHttpResponse(pieces())
        start_response("200 OK", list(response.items()))
        return response

    messages = serve(app, body=b"action=export")
    assert seen == [("view", 1), ("streaming", 0), ("streaming", 0)]
    assert b"".join(m.get("body", b"") for m in messages[1:]).endswith(b"y")
    assert uploads_on_their_way(60) == 0


def test_an_upload_still_arriving_counts_only_while_it_is_recent():
    started = asyncio.Event()
    front = front_for(lambda environ, start_response: [])
    scope = post_scope(100)

    async def receive():  # a slow phone: its body never finishes here
        started.set()
        await asyncio.sleep(3600)

    async def send(message):
        pass

    async def watch():
        upload = asyncio.ensure_future(front(scope, receive, send))
        await started.wait()
        counts = [uploads_on_their_way(60)]
        await asyncio.sleep(0.05)
        counts.append(uploads_on_their_way(0.01))  # it started longer ago than that
        upload.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await upload
        counts.append(uploads_on_their_way(60))
        return counts

    assert asyncio.run(watch()) == [1, 0, 0]
