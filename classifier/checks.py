"""System checks for `manage.py check --deploy` beyond Django's own."""

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=True)
def secret_key_from_environment(app_configs, **kwargs):
    # Django's security.W009 cannot see this: a generated key is long and random, but it
    # differs in every process and changes on every restart.
    if settings.SECRET_KEY_FROM_ENV:
        return []
    return [
        Warning(
            "DJANGO_SECRET_KEY is not set, so each process signs sessions and CSRF tokens "
            "with its own random key: logins and forms fail across pods and restarts.",
            hint="Set DJANGO_SECRET_KEY from a Secret (README: Deploy, the classifier Secret).",
            id="classifier.W001",
        )
    ]


@register(Tags.security, deploy=True)
def api_keys_are_long(app_configs, **kwargs):
    short = [key for key in settings.CLASSIFIER_API_KEYS if len(key) < 20]
    if not short:
        return []
    return [
        Warning(
            f"{len(short)} of CLASSIFIER_API_KEYS is shorter than 20 characters.",
            hint="Use long random keys, e.g. `python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`.",
            id="classifier.W002",
        )
    ]
