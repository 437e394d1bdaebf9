"""Who may classify, and how often: the one rule every endpoint that classifies applies
(views.classifies wraps them all).

- With CLASSIFIER_API_KEYS set, a request classifies only with one of the keys in its
  `Authorization: Bearer <key>` header, or, where the endpoint has Django's CSRF
  protection (the page), from a logged-in staff user's session. A key is never read from
  a form field, a query string or a cookie, compared in constant time, and never logged.
- With CLASSIFIER_RATE_LIMIT set (e.g. "120/m"), each client gets that many classify
  requests per period: a client is its key when it sent a valid one, else its address.
  The counts live in this process's memory, so the limit holds per pod (N pods behind the
  LoadBalancer let a client through up to N times the rate).
- A client's address is the connection's (REMOTE_ADDR), never a header a client could
  set: on Kubernetes the Service keeps the real one (`externalTrafficPolicy: Local`).
"""

from __future__ import annotations

import hashlib
import hmac

from django.conf import settings
from django.http import HttpRequest
from django_ratelimit.core import get_usage

from .errors import RateLimited, Unauthorized

# Keys in a header only: `Authorization: Bearer <key>`.
AUTH_SCHEME = "bearer"
RATE_LIMIT_GROUP = "classify"


def client_ip(request: HttpRequest) -> str:
    """The client's address as the connection gives it (also django-axes' view of it)."""
    return request.META.get("REMOTE_ADDR", "")


def valid_key(request: HttpRequest) -> str | None:
    """The configured key the request's Authorization header carries, or None."""
    keys = settings.CLASSIFIER_API_KEYS
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if not keys or scheme.lower() != AUTH_SCHEME or not token:
        return None
    # Constant time: compare fixed-length digests, and compare with every key.
    given = hashlib.sha256(token.encode()).digest()
    found = None
    for key in keys:
        if hmac.compare_digest(given, hashlib.sha256(key.encode()).digest()):
            found = key
    return found


def check(request: HttpRequest, *, session: bool) -> None:
    """Raise Unauthorized or RateLimited unless `request` may classify now. `session`:
    the endpoint has CSRF protection, so a staff user's session may stand for a key."""
    key = valid_key(request)
    if settings.CLASSIFIER_API_KEYS and key is None:
        staff = session and request.user.is_authenticated and request.user.is_staff
        if not staff:
            raise Unauthorized(
                "This service needs an API key: send `Authorization: Bearer <key>`"
                + (", or log in as a staff user." if session else ".")
            )
    rate = settings.CLASSIFIER_RATE_LIMIT
    if rate:
        client = f"key:{hashlib.sha256(key.encode()).hexdigest()}" if key else client_ip(request)
        usage = get_usage(
            request,
            group=RATE_LIMIT_GROUP,
            key=lambda _group, _request: client,
            rate=rate,
            increment=True,
        )
        if usage and usage["should_limit"]:
            error = RateLimited(
                f"Too many requests: the limit is {rate} per client; retry in "
                f"{max(1, usage['time_left'])} s."
            )
            error.retry_after = max(1, usage["time_left"])
            raise error
