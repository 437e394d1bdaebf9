"""The server's front: a request reaches a request thread only once it has fully arrived.

gunicorn's asgi worker reads every connection in one event loop: headers and bodies
arrive there, at whatever speed the client sends them, holding a socket and a coroutine
but no thread. `BufferingFront` (an ASGI app) then reads the whole body in the loop too,
within its bounds, and only then hands the request to Django (WSGI) in a pool of request
threads. So a client dribbling one byte every 20 s, or a phone uploading a photo
over a slow link, costs no request thread, and the threads stay free for the work that
needs them: decoding, waiting on the batcher, storing. Why this front: docs/design.md.

Bounds, all before Django sees the request:
- a body declared larger than `max_body` is not read: Django gets an empty body with the
  declared Content-Length and the views refuse it by that size (413);
- a chunked body is not read either: the views ask for a Content-Length (411);
- bodies held in memory (arriving, or in a request thread) are bounded by `buffer_bytes`
  in all: past it a request waits up to `body_timeout_s` for room, then 503;
- a body must arrive within `body_timeout_s` in all, with no silence longer than
  `idle_timeout_s` (0: any): else the view answers 408.
A refusal the front decides is put in the environ (FRONT_ERROR) and answered by
`classifier.middleware.FrontErrorMiddleware` with the views' JSON, so every error still
comes out of one place. No Django imports here but `from_settings`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from a2wsgi.wsgi import build_environ

from .errors import Overloaded, RequestTimeout, ServiceError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

# The environ key under which a refusal decided by the front reaches Django.
FRONT_ERROR = "classifier.front_error"
# A streamed response (a file, an export) goes out in pieces of about this size, at most
# STREAM_AHEAD of them waiting for the client at a time.
STREAM_CHUNK_BYTES = 256 * 1024
STREAM_AHEAD = 4

logger = logging.getLogger(__name__)


class _Uploads:
    """Requests with a body on their way to the model, in all fronts of the process:
    changed by the event loop and the request threads, read by the micro-batcher's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arriving: dict[int, float] = {}  # id -> when its body started arriving
        self.in_threads = 0  # whose body has arrived, in a request thread until it returns

    def arriving(self, key: int) -> None:
        with self._lock:
            self._arriving[key] = time.monotonic()

    def arrived(self, key: int) -> None:
        with self._lock:
            self._arriving.pop(key, None)

    def entered_thread(self) -> None:
        with self._lock:
            self.in_threads += 1

    def left_thread(self) -> None:
        with self._lock:
            self.in_threads -= 1

    def on_their_way(self, window_s: float) -> int:
        """In request threads now, or started arriving within the last `window_s`: a
        burst's requests. A slow upload that started long ago does not count."""
        since = time.monotonic() - window_s
        with self._lock:
            recent = sum(started >= since for started in self._arriving.values())
            return self.in_threads + recent


_uploads = _Uploads()


def uploads_on_their_way(window_s: float) -> int:
    """Requests with a body in request threads now, or that started arriving within the
    last `window_s` (0 where no front runs: tests, runserver)."""
    return _uploads.on_their_way(window_s)


class _ByteBudget:
    """Bytes of request bodies held in memory at once (asyncio: the loop's thread only)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, size: int, timeout_s: float):
        size = min(size, self.capacity)
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: self.in_use + size <= self.capacity), timeout_s
            )
            self.in_use += size
        try:
            yield
        finally:
            async with self._changed:
                self.in_use -= size
                self._changed.notify_all()


class _Disconnected(Exception):
    pass


class BufferingFront:
    def __init__(
        self,
        wsgi_app: Callable,
        *,
        threads: int,
        max_body: int,
        buffer_bytes: int,
        body_timeout_s: float,
        idle_timeout_s: float,
    ) -> None:
        self.threads = threads
        self.max_body = max_body
        self.body_timeout_s = body_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._buffer_bytes = buffer_bytes
        self._budget: _ByteBudget | None = None  # made in the loop that serves
        self._wsgi_app = wsgi_app
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="request")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets: none here
            return
        if self._budget is None:
            self._budget = _ByteBudget(self._buffer_bytes)
        length = _declared_length(scope)
        if length is None or length > self.max_body or length == 0:
            # Nothing to read, or more than any view takes, or chunked: the view answers
            # from the headers (413, 411) without a body.
            await self._call(scope, b"", None, send)
            return
        error: ServiceError | None = None
        body = b""
        key = id(scope)
        _uploads.arriving(key)
        try:
            async with contextlib.AsyncExitStack() as holding:
                try:
                    room = self._budget.hold(length, self.body_timeout_s)
                    await holding.enter_async_context(room)
                except TimeoutError:
                    error = Overloaded("too many request bodies are arriving")
                else:
                    try:
                        body = await self._read(receive, length)
                    except TimeoutError:
                        error = RequestTimeout(
                            "The request body did not arrive in time; send it again."
                        )
                    except _Disconnected:
                        # Nobody is left to read the answer; it is still logged and counted.
                        error = RequestTimeout("The client left before its body arrived.")
                _uploads.arrived(key)
                # The body's bytes stay held until the request thread is done with them.
                await self._call(scope, body, error, send)
        finally:
            _uploads.arrived(key)  # also when the read failed or was cancelled

    async def _call(
        self, scope: Scope, body: bytes, error: ServiceError | None, send: Send
    ) -> None:
        """Run the WSGI app in a request thread and send its response. A response that is
        not streamed is collected in the thread and handed to the loop in one piece: every
        hand-over between the thread and the loop waits for the other to get the GIL."""
        environ = build_environ(scope, io.BytesIO(body))
        if error is not None:
            environ[FRONT_ERROR] = error
        loop = asyncio.get_running_loop()
        messages: asyncio.Queue[list[dict]] = asyncio.Queue()
        room = threading.Semaphore(STREAM_AHEAD)
        gone = threading.Event()  # the client left: the rest is dropped

        def post(batch: list[dict]) -> None:
            if gone.is_set():
                return
            room.acquire()  # a slow reader of a streamed response holds its thread here
            if not gone.is_set():
                loop.call_soon_threadsafe(messages.put_nowait, batch)

        counted = bool(body)

        def done_with_the_model() -> None:
            # Once the view has returned, before its client can send the next request: a
            # streamed body sent after that (an export) holds no batch for minutes.
            nonlocal counted
            if counted:
                counted = False
                _uploads.left_thread()

        def respond() -> None:
            try:
                _respond(self._wsgi_app, environ, post, done_with_the_model)
            finally:
                done_with_the_model()

        if body:
            _uploads.entered_thread()
        work = loop.run_in_executor(self._threads, respond)
        try:
            while True:
                batch = await messages.get()
                room.release()
                for message in batch:
                    await send(message)
                if not batch[-1].get("more_body", False):
                    break
        except BaseException:
            gone.set()
            room.release()  # a thread waiting in post() goes on, and posts no more
            raise
        finally:
            await work

    async def _read(self, receive: Receive, length: int) -> bytes:
        """The whole body, or TimeoutError past the deadline or a long silence."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        chunks, size = [], 0
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError
            wait = min(left, self.idle_timeout_s) if self.idle_timeout_s else left
            message = await asyncio.wait_for(receive(), wait)
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > length:  # the parser frames by Content-Length; never more
                raise _Disconnected
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _declared_length(scope: Scope) -> int | None:
    """The Content-Length, or None when the body is chunked or the header is unusable."""
    length = None
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return None
    return 0 if length is None else length


def _respond(
    app: Callable,
    environ: dict,
    post: Callable[[list[dict]], None],
    returned: Callable[[], None] = lambda: None,
) -> None:
    """In a request thread: call the WSGI app, post its response as ASGI messages;
    `returned()` once the app has returned (its view is done; a streamed body is not)."""
    started: list[dict] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info=None):
        started[:] = [
            {
                "type": "http.response.start",
                "status": int(status.split(" ", 1)[0]),
                # Django writes each Set-Cookie value with a leading space.
                "headers": [
                    (k.strip().lower().encode("latin-1"), v.strip().encode("latin-1"))
                    for k, v in headers
                ],
            }
        ]
        return lambda data: pending.append(data)

    pending: list[bytes] = []
    sent = False
    try:
        result = app(environ, start_response)
        returned()
        try:
            size = 0
            for chunk in result:
                pending.append(chunk)
                size += len(chunk)
                if size >= STREAM_CHUNK_BYTES:  # streamed: send what there is
                    post([*started, _body(pending, more=True)])
                    started, pending, size, sent = [], [], 0, True
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
    except Exception:  # Django answers its own errors: this is the bridge's last resort
        logger.error("The WSGI app raised:\n%s", traceback.format_exc())
        if sent:  # the client has part of the answer: end it there
            post([_body([], more=False)])
            return
        started, pending = [], []
    if not started and not sent:
        started = [{**_INTERNAL_ERROR_START, "headers": list(_INTERNAL_ERROR_START["headers"])}]
        pending = [_INTERNAL_ERROR_BODY]
    if started and not any(name == b"content-length" for name, _ in started[0]["headers"]):
        started[0]["headers"].append((b"content-length", str(sum(map(len, pending))).encode()))
    post([*started, _body(pending, more=False)])


_INTERNAL_ERROR_START = {
    "type": "http.response.start",
    "status": 500,
    "headers": [(b"content-type", b"application/json")],
}
_INTERNAL_ERROR_BODY = (
    b'{"success": false, "error": {"code": "internal_error", '
    b'"message": "Unexpected server error; it was logged."}}'
)


def _body(chunks: list[bytes], *, more: bool) -> dict:
    return {"type": "http.response.body", "body": b"".join(chunks), "more_body": more}


def from_settings(wsgi_app: Callable) -> BufferingFront:
    """The front around `wsgi_app` with the bounds of Django's settings (webapp/settings.py)."""
    from django.conf import settings

    return BufferingFront(
        wsgi_app,
        threads=settings.REQUEST_THREADS,
        max_body=settings.CLASSIFIER_MAX_REQUEST_BYTES,
        buffer_bytes=settings.REQUEST_BUFFER_MB * 2**20,
        body_timeout_s=settings.REQUEST_BODY_TIMEOUT_S,
        idle_timeout_s=settings.REQUEST_IDLE_TIMEOUT_S,
    )


async def _lifespan(receive: Receive, send: Send) -> None:
    # Nothing to start or stop here: the model starts with Django (apps.ready) and stops
    # in gunicorn's worker_exit hook, after in-flight requests are answered.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
