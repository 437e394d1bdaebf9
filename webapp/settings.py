"""Settings for the image-classification service: one file, read from the environment.

Every variable is listed in `.env.example` and the README. With none set, the service runs
on a laptop: SQLite next to manage.py, DEBUG off, loopback hosts only.
"""

import os
import re
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
import drf_spectacular_sidecar
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={value!r}: use true or false")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r}: expected a whole number") from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name}={value!r}: must be at least {minimum}")
    return number


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG")

# Unset: a random key per process. Fine for one laptop process (sessions and CSRF tokens
# do not survive a restart and are not shared between processes); servers log a warning
# and `check --deploy` fails (classifier/checks.py). Deployments set it from a Secret.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "") or secrets.token_urlsafe(50)
SECRET_KEY_FROM_ENV = bool(os.environ.get("DJANGO_SECRET_KEY"))

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")
# System checks this deployment has decided to accept, by id (e.g. the HTTPS warnings of a
# plain-HTTP quick start); the deployment's configuration says why, in one place.
SILENCED_SYSTEM_CHECKS = env_list("DJANGO_SILENCED_SYSTEM_CHECKS", "")
# The Django admin (prediction history): where it lives, and whether this deployment
# serves it at all (public-facing pods can switch it off; an internal one keeps it).
ADMIN_ENABLED = env_bool("DJANGO_ADMIN_ENABLED", True)
ADMIN_URL = os.environ.get("DJANGO_ADMIN_URL", "admin/").strip("/") + "/"

# --- HTTPS: for deployments that terminate TLS (in gunicorn, or a proxy in front) ---------
# DJANGO_HTTPS=true: the site is only served over https. It switches on the redirect, secure
# cookies and HSTS below; each can still be set on its own.
HTTPS = env_bool("DJANGO_HTTPS")
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", HTTPS)
# Probes and in-cluster scrapes may come over plain HTTP behind a proxy: never redirected.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SESSION_COOKIE_SECURE = env_bool("DJANGO_SESSION_COOKIE_SECURE", HTTPS)
CSRF_COOKIE_SECURE = env_bool("DJANGO_CSRF_COOKIE_SECURE", HTTPS)
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 31_536_000 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS")
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD")
# Only behind a proxy that always sets this header (and strips it from clients), e.g.
# "X-Forwarded-Proto: https". Unset: the connection itself says whether it is https.
_proxy_ssl_header = os.environ.get("DJANGO_SECURE_PROXY_SSL_HEADER", "").strip()
if _proxy_ssl_header:
    _header, _, _value = _proxy_ssl_header.partition(":")
    if not _header.strip() or not _value.strip():
        raise ImproperlyConfigured(
            f"DJANGO_SECURE_PROXY_SSL_HEADER={_proxy_ssl_header!r}: use 'Header-Name: value'"
        )
    SECURE_PROXY_SSL_HEADER = (
        "HTTP_" + _header.strip().upper().replace("-", "_"),
        _value.strip(),
    )
# nosniff, Referrer-Policy same-origin, X-Frame-Options DENY and HttpOnly session cookies
# are Django's defaults (tested in test_security.py); the CSP comes from our middleware.

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "classifier",
]

MIDDLEWARE = [
    "classifier.middleware.RequestObservabilityMiddleware",
    # Refusals the server's front decided (a body too slow, no room for it): JSON answers.
    "classifier.middleware.FrontErrorMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "classifier.middleware.SecurityHeadersMiddleware",
    # Last, as django-axes requires: answers a locked-out client's login with 429.
    "axes.middleware.AxesMiddleware",
]

# Password guessing (django-axes): a client, by user name AND network together, is locked
# out of logging in after DJANGO_LOGIN_FAILURE_LIMIT failures, and a user name from any
# addresses after DJANGO_LOGIN_USERNAME_FAILURE_LIMIT (classifier/logins.py), for
# DJANGO_LOGIN_LOCKOUT_SECONDS after the last failure. Attempts are kept in the database,
# so every pod sees them. The network is the connection's address, never a header, as a
# /64 for IPv6 (classifier.access.client_network; on Kubernetes the Service keeps the
# client's own address).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_HANDLER = "classifier.logins.LoginLockout"
AXES_FAILURE_LIMIT = env_int("DJANGO_LOGIN_FAILURE_LIMIT", 5, minimum=1)
LOGIN_USERNAME_FAILURE_LIMIT = env_int("DJANGO_LOGIN_USERNAME_FAILURE_LIMIT", 20, minimum=1)
AXES_COOLOFF_TIME = timedelta(seconds=env_int("DJANGO_LOGIN_LOCKOUT_SECONDS", 900, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_CLIENT_IP_CALLABLE = "classifier.access.client_network"
AXES_RESET_ON_SUCCESS = True

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # An unreachable server must not hold a request (or a pool worker) for minutes.
    DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = env_int(
        "DATABASE_CONNECT_TIMEOUT", 5, minimum=1
    )
    # One small connection pool per process, shared by its request threads: many pods x
    # many threads must not exhaust PostgreSQL's max_connections (default 100).
    _pool_size = env_int("DATABASE_POOL_MAX_SIZE", 4)
    if _pool_size:
        DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps connections instead
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1,
            "max_size": _pool_size,
            # A request waits this long for a connection; then its answer is returned
            # unrecorded (CLASSIFIER_STORE_TIMEOUT_MS) rather than held up.
            "timeout": env_int("DATABASE_POOL_TIMEOUT", 3, minimum=1),
        }
elif DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Request threads write history concurrently: take the write lock at BEGIN and wait
    # for it, instead of failing with "database is locked"; WAL lets reads go on meanwhile.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # The feedback index's INCLUDE columns (for PostgreSQL's index-only scans) are left
    # out on SQLite, which works the same without them: no warning on every command.
    SILENCED_SYSTEM_CHECKS = [*SILENCED_SYSTEM_CHECKS, "models.W040"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("DJANGO_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", BASE_DIR / "staticfiles"))
# Swagger UI for /api/ (static/classifier/api-docs.js), served by WhiteNoise like our own
# files: drf-spectacular-sidecar's copy of swagger-ui-dist, and only that (the package's
# Redoc, unused, would double what collectstatic compresses).
SWAGGER_UI_DIR = (
    Path(drf_spectacular_sidecar.__file__).parent / "static/drf_spectacular_sidecar/swagger-ui-dist"
)
STATICFILES_DIRS = [BASE_DIR / "static", ("swagger-ui", SWAGGER_UI_DIR)]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Hashed, compressed names served by WhiteNoise; needs `collectstatic` (done by
    # `make run` and the Docker build).
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# --- The classifier -------------------------------------------------------------------
# "imagenet" (Keras downloads ~100 MB once into KERAS_HOME), "random" (untrained: tests
# and offline demos) or the path of a local ResNet50 weights file.
CLASSIFIER_WEIGHTS = os.environ.get("CLASSIFIER_WEIGHTS", "imagenet")
# Your own classes: a model directory from `manage.py train_head` (or a fine-tuned
# `model.keras` with its labels.txt); unset = ImageNet's 1000 classes.
CLASSIFIER_MODEL = os.environ.get("CLASSIFIER_MODEL", "")
# tensorflow (the reference) or openvino (the same Keras model, converted; faster on CPUs).
CLASSIFIER_ENGINE = os.environ.get("CLASSIFIER_ENGINE", "tensorflow")
# fp32, or bf16 where the CPU has AMX or AVX512-BF16 (elsewhere: a warning, then fp32).
CLASSIFIER_PRECISION = os.environ.get("CLASSIFIER_PRECISION", "fp32")
# OpenVINO only: a directory (or .xml) from `manage.py export_openvino`; unset = convert
# the Keras model at start (needs TensorFlow). Its weights must match CLASSIFIER_WEIGHTS.
CLASSIFIER_OPENVINO_IR = os.environ.get("CLASSIFIER_OPENVINO_IR", "")
# Threads of one forward pass (TensorFlow or OpenVINO); 0 = the CPUs the container may use
# (affinity and cgroup quota).
CLASSIFIER_THREADS = env_int("CLASSIFIER_THREADS", 0)
# Load the model when a server process starts (gunicorn, runserver). "false" leaves it to
# the code that needs it (tests, benchmark).
CLASSIFIER_LOAD_ON_START = env_bool("CLASSIFIER_LOAD_ON_START", True)
CLASSIFIER_MAX_IMAGES = env_int("CLASSIFIER_MAX_IMAGES", 8, minimum=1)
CLASSIFIER_MAX_IMAGE_BYTES = env_int("CLASSIFIER_MAX_IMAGE_BYTES", 10 * 1024 * 1024, minimum=1)
CLASSIFIER_MAX_PIXELS = env_int("CLASSIFIER_MAX_PIXELS", 40_000_000, minimum=1)
# Memory that decoding may take at once in a process, in MiB, as estimated per image from
# its header (classifier/images.py: a 12 MP JPEG ~3 MB, a 40 MP RGBA PNG ~360 MB); an image
# waits for room up to CLASSIFIER_QUEUE_TIMEOUT_MS, then 503. One client holds at most half
# of it, and an image needing more than half is 413.
CLASSIFIER_DECODE_MEMORY_MB = env_int("CLASSIFIER_DECODE_MEMORY_MB", 768, minimum=16)
# Whole request body; base64 adds a third to the image bytes.
CLASSIFIER_MAX_REQUEST_BYTES = env_int(
    "CLASSIFIER_MAX_REQUEST_BYTES", 32 * 1024 * 1024, minimum=1024
)
# Micro-batching (classifier/batching.py): images per forward pass; how long a forward
# pass waits for company when fewer are queued (0: a lone request runs at once); images
# allowed to wait (beyond that: 503 + Retry-After); how long one may wait (then 503).
CLASSIFIER_MAX_BATCH = env_int("CLASSIFIER_MAX_BATCH", 32, minimum=1)
CLASSIFIER_BATCH_WAIT_MS = env_int("CLASSIFIER_BATCH_WAIT_MS", 150)
# A forming batch stops waiting once no request has arrived or finished for this long
# and none is decoding or finishing (classifier/batching.py); 0: off.
CLASSIFIER_BATCH_ARRIVAL_GAP_MS = env_int("CLASSIFIER_BATCH_ARRIVAL_GAP_MS", 30)
CLASSIFIER_MAX_QUEUE = env_int("CLASSIFIER_MAX_QUEUE", 32, minimum=1)
CLASSIFIER_QUEUE_TIMEOUT_MS = env_int("CLASSIFIER_QUEUE_TIMEOUT_MS", 5000, minimum=1)
# Recording a prediction may take this long (a slow or locked database); past it, the
# answer is still returned, marked "stored": false, and the failure logged and counted.
CLASSIFIER_STORE_TIMEOUT_MS = env_int("CLASSIFIER_STORE_TIMEOUT_MS", 3000, minimum=1)
# Each history row keeps its image's pooled features (2048 float16, 4 kB), from the pass
# that answered, so that a head can be trained on the history without the images
# (`manage.py train_head --from-history`). false: rows without them.
CLASSIFIER_STORE_FEATURES = env_bool("CLASSIFIER_STORE_FEATURES", True)
# Comma-separated API keys. Set: nothing classifies without `Authorization: Bearer <key>`,
# except the page for a logged-in staff user (classifier/access.py). Unset: open, as in
# the classic Keras REST example.
CLASSIFIER_API_KEYS = env_list("CLASSIFIER_API_KEYS", "")
# Classify requests per client (its key, else its address) and period, per pod: "120/m",
# "10/s", "1000/h". Empty: no limit. Past it: 429 with Retry-After.
CLASSIFIER_RATE_LIMIT = os.environ.get("CLASSIFIER_RATE_LIMIT", "").strip()
if CLASSIFIER_RATE_LIMIT and not re.fullmatch(r"[1-9]\d*/\d*[smhd]", CLASSIFIER_RATE_LIMIT):
    raise ImproperlyConfigured(
        f"CLASSIFIER_RATE_LIMIT={CLASSIFIER_RATE_LIMIT!r}: use requests/period, e.g. 120/m"
    )
# A client, for rate limits, login lockouts and the decode share: its address, or the
# network of this prefix length around it. One IPv6 host is usually given a whole /64.
CLASSIFIER_IPV4_PREFIX = env_int("CLASSIFIER_IPV4_PREFIX", 32)
CLASSIFIER_IPV6_PREFIX = env_int("CLASSIFIER_IPV6_PREFIX", 64)
if CLASSIFIER_IPV4_PREFIX > 32 or CLASSIFIER_IPV6_PREFIX > 128:
    raise ImproperlyConfigured("CLASSIFIER_IPV4_PREFIX is 0-32, CLASSIFIER_IPV6_PREFIX 0-128")
# Prometheus metrics on their own listener ("0.0.0.0:9100"), never the public port.
# Empty: no metrics listener.
CLASSIFIER_METRICS_BIND = os.environ.get("CLASSIFIER_METRICS_BIND", "").strip()
CLASSIFIER_DEFAULT_TOP_K = 5
CLASSIFIER_MAX_TOP_K = 20

# --- The server's front (classifier/front.py, webapp/asgi.py) --------------------------
# Request threads: they decode images and then wait on the micro-batcher, so enough for a
# running batch plus a full queue (CLASSIFIER_MAX_BATCH + CLASSIFIER_MAX_QUEUE), plus 8
# that no admitted request can hold. Without spare ones, a burst holds every thread: the
# next client waits unseen in front of the pool for a whole forward pass instead of
# getting the queue bound's fast 503, and so do /readyz and /healthz, past the readiness
# probe's timeout (k8s: 2 s). Requests reach a thread only once they have fully arrived.
REQUEST_THREADS = env_int(
    "GUNICORN_THREADS", CLASSIFIER_MAX_BATCH + CLASSIFIER_MAX_QUEUE + 8, minimum=1
)
# Request bodies held in memory at once, arriving or being handled (MiB); past it a
# request waits for room up to REQUEST_BODY_TIMEOUT_S, then 503.
REQUEST_BUFFER_MB = env_int("GUNICORN_BUFFER_MB", 256, minimum=32)
# A body must arrive within this many seconds in all, and with no silence longer than
# GUNICORN_CLIENT_TIMEOUT (0: no limit on silence); else 408. (A 10 MB photo at 1 Mbit/s
# takes 84 s.)
REQUEST_BODY_TIMEOUT_S = env_int("GUNICORN_BODY_TIMEOUT", 120, minimum=1)
REQUEST_IDLE_TIMEOUT_S = env_int("GUNICORN_CLIENT_TIMEOUT", 30)

# The JSON API checks sizes itself and answers 413 in JSON; Django's own limit on
# non-file form data would otherwise answer with an HTML 400 first.
DATA_UPLOAD_MAX_MEMORY_SIZE = CLASSIFIER_MAX_REQUEST_BYTES
# More files than images allowed stops the multipart parser early (413 too_many_images).
DATA_UPLOAD_MAX_NUMBER_FILES = CLASSIFIER_MAX_IMAGES
# Bodies are bounded by CLASSIFIER_MAX_REQUEST_BYTES before they are parsed, so uploads can
# stay in memory: nothing is written to a pod's (read-only) disk.
FILE_UPLOAD_MAX_MEMORY_SIZE = CLASSIFIER_MAX_REQUEST_BYTES

# LOG_FORMAT=json: every log line is one JSON object, and each request gets one line from
# classifier.middleware (request id, status, latency, image sizes, top label; never image
# bytes) in place of gunicorn's access log. plain: text lines, gunicorn's access log.
LOG_FORMAT = os.environ.get("LOG_FORMAT", "plain").strip().lower()
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r}: use plain or json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"answered_errors": {"()": "classifier.logs.DropAnsweredErrors"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["answered_errors"],
        }
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "django": {"level": os.environ.get("DJANGO_LOG_LEVEL", "INFO"), "propagate": True},
        "classifier.requests": {"level": "INFO" if LOG_FORMAT == "json" else "WARNING"},
        # django-axes says at every start which lockout rule it applies: once is in the docs.
        "axes.apps": {"level": "WARNING"},
    },
}
