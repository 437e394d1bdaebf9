"""The API's description and its docs page: `openapi.yaml` beside this module is the one
source. /openapi.json serves it (parsed once per process), /api/ renders it with Swagger UI
from our own static files (drf-spectacular-sidecar's swagger-ui-dist; no CDN).

The tests hold the description to the code: every response of the Django test client to a
path described there is validated against it (tests/conftest.py). No model, no database.
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt

from .views import allow_methods

DESCRIPTION_FILE = Path(__file__).with_name("openapi.yaml")


@functools.cache
def description() -> dict:
    """openapi.yaml, parsed (safe_load: plain data only)."""
    with DESCRIPTION_FILE.open(encoding="utf-8") as file:
        return yaml.safe_load(file)


@csrf_exempt
@allow_methods("GET", "HEAD")
def openapi_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse(description())


@csrf_exempt
@allow_methods("GET", "HEAD")
def api_docs(request: HttpRequest) -> HttpResponse:
    return render(request, "classifier/api_docs.html", {"openapi_url": reverse("openapi")})
