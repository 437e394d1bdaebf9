"""gunicorn settings for the classifier: `gunicorn -c gunicorn.conf.py webapp.wsgi`.

One worker process holds one ResNet50; concurrency inside it comes from threads, and
scale beyond one machine from more pods. Every value can be overridden from the
environment (GUNICORN_*), or with GUNICORN_CMD_ARGS.
"""

import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# Each worker loads its own model (~1 GiB with TensorFlow): one per container.
workers = int(os.environ.get("GUNICORN_WORKERS", "1"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
# Never --preload: TensorFlow's thread pools do not survive fork().
preload_app = False
# A request waits for at most one queued forward pass; the model loads in a background
# thread, so the worker heartbeat is never blocked by it.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "25"))
keepalive = 5
# The heartbeat file on tmpfs: a slow or read-only disk must not stall workers.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108 - tmpfs, by design
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
# gunicorn's runtime control socket (new in 24) is not used; it would write to $HOME,
# which is read-only in the container.
control_socket_disable = True
# Uploads are bounded in the app; these guard the header parser.
limit_request_line = 8190
limit_request_fields = 100
