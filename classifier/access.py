"""Who may classify, and how often: the one rule every endpoint that classifies applies
(each calls `check` before it reads the body: /predict, the page, /v2 infer).

- With CLASSIFIER_API_KEYS set, a request classifies only with one of the keys in its
  `Authorization: Bearer <key>` header, or, where the endpoint has Django's CSRF
  protection (the page), from a logged-in staff user's session. A key is never read from
  a form field, a query string or a cookie, compared in constant time, and never logged.
- With CLASSIFIER_RATE_LIMIT set (e.g. "120/m"), each client gets that many classify
  requests per period: a client is its key when it sent a valid one, else its network
  (`client_network`). Requests with a wrong or missing key count too, before their 401.
  The counts live in this process's memory, so the limit holds per pod (N pods behind the
  LoadBalancer let a client through up to N times the rate).
- A client's address is the connection's (REMOTE_ADDR), never a header a client could
  set: on Kubernetes the Service keeps the real one (`externalTrafficPolicy: Local`). One
  IPv6 host is given a whole /64 (and may use any address in it), so a client is its
  /64 (CLASSIFIER_IPV6_PREFIX) and, for IPv4, its address (CLASSIFIER_IPV4_PREFIX).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress

from django.conf import settings
from django.http import HttpRequest
from django_ratelimit.core import get_usage

from .errors import RateLimited, Unauthorized

# Keys in a header only: `Authorization: Bearer <key>`.
AUTH_SCHEME = "bearer"
RATE_LIMIT_GROUP = "classify"


def client_ip(request: HttpRequest) -> str:
    """The client's address as the connection gives it."""
    return request.META.get("REMOTE_ADDR", "")


def client_network(request: HttpRequest) -> str:
    """The client as limits count it (rate limit, login lockout, decode share): its
    address with the host bits past CLASSIFIER_IPV6_PREFIX / CLASSIFIER_IPV4_PREFIX
    cleared, written as an address ("2001:db8:1:2::" for a /64)."""
    return _network(
        client_ip(request), settings.CLASSIFIER_IPV4_PREFIX, settings.CLASSIFIER_IPV6_PREFIX
    )


@functools.lru_cache(maxsize=4096)
def _network(address: str, ipv4_prefix: int, ipv6_prefix: int) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    prefix = ipv4_prefix if ip.version == 4 else ipv6_prefix
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


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
    # Counted before the key is judged: guessing keys costs a client its allowance too.
    _count(request, key)
    if settings.CLASSIFIER_API_KEYS and key is None:
        staff = session and request.user.is_authenticated and request.user.is_staff
        if not staff:
            raise Unauthorized(
                "This service needs an API key: send `Authorization: Bearer <key>`"
                + (", or log in as a staff user." if session else ".")
            )


def _count(request: HttpRequest, key: str | None) -> None:
    rate = settings.CLASSIFIER_RATE_LIMIT
    if rate:
        client = (
            f"key:{hashlib.sha256(key.encode()).hexdigest()}" if key else client_network(request)
        )
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
