"""The server's front around the WSGI app (classifier/front.py), from the settings.

gunicorn.conf.py serves `webapp.wsgi` through it in gunicorn's asgi worker, so the usual
command line is unchanged; `application` here is the same for other ASGI servers."""

import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

from classifier.front import BufferingFront

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")


def front(wsgi_app) -> BufferingFront:
    return BufferingFront(
        wsgi_app,
        threads=settings.REQUEST_THREADS,
        max_body=settings.CLASSIFIER_MAX_REQUEST_BYTES,
        buffer_bytes=settings.REQUEST_BUFFER_MB * 2**20,
        body_timeout_s=settings.REQUEST_BODY_TIMEOUT_S,
        idle_timeout_s=settings.REQUEST_IDLE_TIMEOUT_S,
    )


application = front(get_wsgi_application())
