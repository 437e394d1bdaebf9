"""gunicorn settings for the classifier: `gunicorn -c gunicorn.conf.py webapp.wsgi`.

One worker process holds one ResNet50; concurrency inside it comes from threads, and
scale beyond one machine from more pods. Every value can be overridden from the
environment (GUNICORN_*), or with GUNICORN_CMD_ARGS.
"""

import contextlib
import ctypes
import ctypes.util
import os


def _limit_malloc_arenas(arenas: int = 2) -> None:
    # glibc gives each busy thread its own malloc arena (up to 8 per core); with dozens of
    # request threads handling multi-MB uploads, freed memory stays spread over them and
    # RSS only grows. Set in the master before fork, so workers inherit it. Same as
    # MALLOC_ARENA_MAX=2, which the container also sets.
    libc = ctypes.util.find_library("c")
    if libc:
        with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
            ctypes.CDLL(libc).mallopt(-8, arenas)  # M_ARENA_MAX


_limit_malloc_arenas(int(os.environ.get("MALLOC_ARENA_MAX", "2")))

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# Each worker loads its own model (about a GiB with TensorFlow): one per container.
workers = int(os.environ.get("GUNICORN_WORKERS", "1"))
worker_class = "gthread"
# Request threads decode images and then wait on the micro-batcher: enough of them for a
# running batch plus a full queue (CLASSIFIER_MAX_BATCH + CLASSIFIER_MAX_QUEUE, as in
# webapp/settings.py: 32 + 32), plus SPARE_THREADS that no admitted request can hold.
# Without spare ones, a burst holds every thread: the next client waits unseen in front
# of the pool for a whole forward pass instead of getting the queue bound's fast 503, and
# so do /readyz and /healthz, past the readiness probe's timeout (k8s: 2 s).
SPARE_THREADS = 8
_admitted = int(os.environ.get("CLASSIFIER_MAX_BATCH") or 32) + int(
    os.environ.get("CLASSIFIER_MAX_QUEUE") or 32
)
threads = int(os.environ.get("GUNICORN_THREADS") or _admitted + SPARE_THREADS)
# Never --preload: TensorFlow's thread pools do not survive fork().
preload_app = False
# A request waits for at most one queued forward pass; the model loads in a background
# thread, so the worker heartbeat is never blocked by it.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "25"))
keepalive = 5
# The heartbeat file on tmpfs: a slow or read-only disk must not stall workers.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108 - tmpfs, by design
# TLS in gunicorn itself, for deployments without a TLS proxy in front (the Kubernetes
# LoadBalancer Service passes TCP through): a certificate and its key, e.g. mounted from a
# kubernetes.io/tls Secret. Both unset: plain HTTP.
certfile = os.environ.get("GUNICORN_CERTFILE") or None
keyfile = os.environ.get("GUNICORN_KEYFILE") or None
errorlog = "-"
if os.environ.get("LOG_FORMAT", "plain").strip().lower() == "json":
    # One JSON line per request comes from the app (classifier.middleware); gunicorn's own
    # lines (start, stop, worker deaths) are JSON too.
    accesslog = None
    logconfig_dict = {
        # gunicorn.access: off. Neither propagates to the root logger, which Django's
        # LOGGING also prints (each line would appear twice).
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
            "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
        },
        "formatters": {
            "generic": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "format": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
                "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            }
        },
    }
else:
    accesslog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
# gunicorn's runtime control socket (new in 24) is not used; it would write to $HOME,
# which is read-only in the container.
control_socket_disable = True
# Uploads are bounded in the app; these guard the header parser.
limit_request_line = 8190
limit_request_fields = 100


# Seconds a client may stay silent while its request (TLS handshake, headers, body) is
# being read. gthread reads them in a request thread with blocking sockets and no limit:
# 64 connections that send half a request and wait would hold every thread for good.
_client_timeout = float(os.environ.get("GUNICORN_CLIENT_TIMEOUT", "30"))


def _bound_client_reads(seconds: float) -> None:
    """Give every connection's socket a timeout for the reads of each request.

    gthread (gunicorn 27) puts a connection's socket back into blocking mode (no timeout)
    before each request and wraps it for TLS in TConn.init(): set the timeout on the raw
    socket before the TLS handshake, and again after init(), which handle() calls before
    reading every request. A stalled client's read then fails (the connection is closed,
    or the API answers 408) and frees its thread. Tested in classifier/tests/test_faults.py.
    """
    from gunicorn import sock as gunicorn_sock
    from gunicorn.workers import gthread

    wrap, init = gunicorn_sock.ssl_wrap_socket, gthread.TConn.init

    def ssl_wrap_socket(raw, conf):
        raw.settimeout(seconds)  # the handshake too
        return wrap(raw, conf)

    def init_with_timeout(conn) -> None:
        init(conn)
        conn.sock.settimeout(seconds)

    gunicorn_sock.ssl_wrap_socket = ssl_wrap_socket
    gthread.TConn.init = init_with_timeout


def post_worker_init(worker) -> None:
    if _client_timeout > 0:
        _bound_client_reads(_client_timeout)
    # On SIGTERM the master closes its copy of the listening socket, but the worker keeps
    # its own until it exits: meanwhile the kernel still completes new connections that
    # nobody accepts, and resets them only when the drain is over (a client that sent a
    # request gets no answer). Close it as soon as the worker stops accepting, so new
    # connections are refused at once. gthread stops accepting outside its event dispatch,
    # so no accept() can run on the closed socket.
    stop_accepting = getattr(worker, "set_accept_enabled", None)
    if stop_accepting is None:  # not gthread
        return

    def set_accept_enabled(enabled: bool) -> None:
        stop_accepting(enabled)
        if not enabled and not worker.alive:
            for listener in worker.sockets:
                listener.close()
            # Kept-alive connections (a load balancer's health checks) now see /readyz 503.
            from classifier import runtime

            runtime.draining.set()

    worker.set_accept_enabled = set_accept_enabled


def worker_exit(server, worker):
    # Runs after in-flight requests have finished (graceful shutdown): stop the
    # inference thread cleanly.
    from classifier import runtime

    runtime.shutdown()
