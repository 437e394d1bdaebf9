"""The ASGI application for other ASGI servers: Django behind the server's front
(classifier/front.py). gunicorn.conf.py serves `webapp.wsgi` through the same front in
gunicorn's asgi worker, so the usual command line is unchanged."""

import os

from django.core.wsgi import get_wsgi_application

from classifier.front import from_settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

application = from_settings(get_wsgi_application())
