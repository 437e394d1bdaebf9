"""gunicorn settings for the classifier: `gunicorn -c gunicorn.conf.py webapp.wsgi`.

One worker process holds one ResNet50. Its event loop (gunicorn's asgi worker) reads
every connection, and the WSGI app gets a request in one of its request threads
(webapp/settings.py REQUEST_THREADS) only once it has fully arrived: post_worker_init
puts the server's front (classifier/front.py) around it. Scale beyond one machine comes
from more pods. Every value can be overridden from the environment
(GUNICORN_*), or with GUNICORN_CMD_ARGS.
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
# An event loop reads connections, so slow clients hold no thread (classifier/front.py).
worker_class = "asgi"
asgi_loop = "uvloop"
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
# Uploads are bounded in classifier/front.py and the views; these guard the header parser.
limit_request_line = 8190
limit_request_fields = 100


def post_worker_init(worker) -> None:
    from classifier.front import BufferingFront, from_settings

    if not isinstance(worker.asgi, BufferingFront):  # webapp.wsgi: Django as WSGI
        worker.asgi = from_settings(worker.asgi)
    # On SIGTERM gunicorn's asgi worker stops accepting within a second and then waits for
    # the connections it has. Say "draining" at once instead (kept-alive connections, such
    # as a load balancer's health checks, see /readyz 503), and stop accepting at once, so
    # that new connections are refused rather than served by a worker on its way out.
    import signal

    from classifier import runtime

    def drain() -> None:
        runtime.draining.set()
        for server in worker.servers:
            server.close()
        worker.handle_exit_signal()

    worker.loop.add_signal_handler(signal.SIGTERM, drain)


def worker_exit(server, worker):
    # Runs after in-flight requests have finished (graceful shutdown): stop the
    # inference thread cleanly.
    from classifier import runtime

    runtime.shutdown()
