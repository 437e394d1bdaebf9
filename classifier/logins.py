"""Admin login lockout (django-axes), with one rule added to axes' own: besides a client
(user name and network together, DJANGO_LOGIN_FAILURE_LIMIT), a user name is locked for
everyone after DJANGO_LOGIN_USERNAME_FAILURE_LIMIT failures from any addresses, so many
addresses cannot share the guessing of one password. Attempts live in the database: the
lockout holds across pods."""

from __future__ import annotations

from axes.attempts import get_cool_off_threshold
from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_client_username, get_failure_limit
from axes.models import AccessAttempt
from django.conf import settings
from django.db.models import Sum


class LoginLockout(AxesDatabaseHandler):
    def get_failures(self, request, credentials: dict | None = None) -> int:
        """The client's failures, or axes' limit once the user name has reached its own:
        axes decides both a lockout and its answer from this number."""
        failures = super().get_failures(request, credentials)
        username = get_client_username(request, credentials)
        if not username:
            return failures
        everyone = AccessAttempt.objects.filter(
            username=username, attempt_time__gte=get_cool_off_threshold(request)
        ).aggregate(total=Sum("failures_since_start"))["total"]
        if (everyone or 0) >= settings.LOGIN_USERNAME_FAILURE_LIMIT:
            return max(failures, get_failure_limit(request, credentials))
        return failures
