"""Logging pieces named in settings.LOGGING, and the log line of a login lockout."""

import logging

from . import metrics

security_log = logging.getLogger("classifier.security")


class DropAnsweredErrors(logging.Filter):
    """Drop Django's own line for an error a view or handler chose to answer.

    django.request logs every 4xx at WARNING and every 5xx at ERROR; django.security logs
    each request with a bad Host header at ERROR with a traceback (scanners send plenty to
    a public address). Those are answers, not faults: each request already has its line
    (gunicorn's access log, or classifier.requests in JSON) with its status and error
    code, and under overload one ERROR per 503 would bury real errors. Unhandled
    exceptions (500, with their traceback) still get through.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "django.security.DisallowedHost":
            return False
        if record.name != "django.request":
            return True
        status = getattr(record, "status_code", None)
        return status is None or (status >= 500 and status != 503)


def count_lockouts(sender, *, request=None, username=None, ip_address=None, **kwargs) -> None:
    """django-axes' user_locked_out: count it, and say who and from where (never a password)."""
    metrics.LOGIN_LOCKOUTS.inc()
    security_log.warning(
        "Login refused: user name %r from %s is locked out after too many failures",
        username,
        ip_address,
        extra={"username": username, "remote_addr": ip_address},
    )
