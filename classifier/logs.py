"""Logging pieces named in settings.LOGGING."""

import logging


class DropAnsweredErrors(logging.Filter):
    """Drop django.request's line for an error response a view chose to send (4xx, 503).

    Those are answers, not faults: each request already has its line (the access log, or
    classifier.requests in JSON), and under overload one ERROR line per 503 would bury real
    errors. Unhandled exceptions (500, with their traceback) still get through.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "django.request":
            return True
        status = getattr(record, "status_code", None)
        return status is None or (status >= 500 and status != 503)
