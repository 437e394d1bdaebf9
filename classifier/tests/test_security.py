"""Web security: deployment settings, HTTPS switches, API keys, cookies, headers."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from classifier.models import Prediction

from . import imagegen
from .helpers import KUBECTL, OVERLAYS, render_kustomization

BASE_DIR = Path(settings.BASE_DIR)
API_KEY = "test-api-key-0123456789abcdef"
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None and not os.environ.get("CI"),
    reason="kubectl (its kustomize) is not installed; CI has it",
)
OTHER_KEY = "second-key-fedcba9876543210"


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    """manage.py in a fresh process, with exactly the DJANGO_/CLASSIFIER_ env given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CLASSIFIER_"))}
    clean.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def kubernetes_env(overlay: str = "production") -> dict[str, str]:
    """The environment an overlay's Deployment gives the app: its rendered ConfigMap, plus
    the Secret's keys."""
    [configmap] = [o for o in render_kustomization(OVERLAYS[overlay]) if o["kind"] == "ConfigMap"]
    return {
        **configmap["data"],
        "DJANGO_SECRET_KEY": "k8s-secret-" + "x7Gq2" * 12,
        "DATABASE_URL": "postgresql://classifier:secret@postgres:5432/classifier",
    }


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_settings_pass_check_deploy(overlay):
    result = manage("check", "--deploy", "--fail-level", "WARNING", **kubernetes_env(overlay))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@needs_kubectl
def test_quick_start_passes_check_deploy_only_by_the_https_checks_it_silences():
    env = kubernetes_env("quickstart")
    silenced = set(env.pop("DJANGO_SILENCED_SYSTEM_CHECKS").split(","))
    result = manage("check", "--deploy", "--fail-level", "WARNING", **env)
    assert result.returncode != 0
    reported = set(re.findall(r"\?: \((\S+)\)", result.stderr))
    assert reported == silenced
    assert all(check.startswith("security.") for check in reported)


def test_check_deploy_fails_on_laptop_defaults():
    # The same command catches what a deployment must not inherit from `make run`.
    result = manage("check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode != 0
    for check in ("security.W004", "security.W008", "security.W012", "classifier.W001"):
        assert check in result.stderr


@needs_kubectl
def test_short_api_keys_are_reported_by_check_deploy():
    result = manage(
        "check", "--deploy", "--fail-level", "WARNING", **kubernetes_env(),
        CLASSIFIER_API_KEYS="short",
    )  # fmt: skip
    assert result.returncode != 0
    assert "classifier.W002" in result.stderr


def proxy_ssl_header(value: str | None) -> subprocess.CompletedProcess:
    env = {"DJANGO_SECURE_PROXY_SSL_HEADER": value} if value is not None else {}
    return manage(
        "shell", "--no-imports", "-c",
        "from django.conf import settings; "
        "print(getattr(settings, 'SECURE_PROXY_SSL_HEADER', None))",
        **env,
    )  # fmt: skip


def test_proxy_ssl_header_only_when_configured():
    assert proxy_ssl_header(None).stdout.strip() == "None"
    configured = proxy_ssl_header("X-Forwarded-Proto: https")
    assert configured.stdout.strip() == "('HTTP_X_FORWARDED_PROTO', 'https')"
    broken = proxy_ssl_header("X-Forwarded-Proto")
    assert broken.returncode != 0
    assert "DJANGO_SECURE_PROXY_SSL_HEADER" in broken.stderr


def test_forwarded_proto_is_not_trusted_by_default(client, settings):
    # Without SECURE_PROXY_SSL_HEADER a client cannot claim https and dodge the redirect.
    settings.SECURE_SSL_REDIRECT = True
    assert settings.SECURE_PROXY_SSL_HEADER is None
    response = client.get("/", HTTP_X_FORWARDED_PROTO="https")
    assert response.status_code == 301


def test_https_settings_redirect_and_send_hsts(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 31_536_000
    response = client.get("/predict")
    assert response.status_code == 301
    assert response["Location"] == "https://testserver/predict"
    secure = client.get("/", secure=True)
    assert secure.status_code == 200
    assert secure["Strict-Transport-Security"].startswith("max-age=31536000")
    # Kubernetes probes (plain HTTP behind a TLS proxy) are never redirected.
    assert client.get("/healthz").status_code == 200


@pytest.mark.django_db
def test_page_cookies_are_secure_when_https_is_on(client, settings):
    settings.CSRF_COOKIE_SECURE = True
    response = client.get("/", secure=True)
    assert response.cookies["csrftoken"]["secure"] is True


def test_security_headers_on_page_and_api(client):
    for response in (client.get("/"), client.get("/model")):
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["Referrer-Policy"] == "same-origin"
        assert response["X-Frame-Options"] == "DENY"
        assert "script-src 'self'" in response["Content-Security-Policy"]
        assert "unsafe-inline" not in response["Content-Security-Policy"]


def picture(name: str = "photo.jpg") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, imagegen.jpeg(1), content_type="image/jpeg")


@pytest.fixture
def api_keys(settings):
    settings.CLASSIFIER_API_KEYS = [API_KEY, OTHER_KEY]


def assert_unauthorized(response):
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="classifier"'
    assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.django_db
def test_api_keys_required_when_configured(client, ready_engine, api_keys):
    assert_unauthorized(client.post("/predict", {"image": picture()}))
    assert_unauthorized(
        client.post("/predict", {"image": picture()}, HTTP_AUTHORIZATION="Bearer wrong-key")
    )
    assert_unauthorized(
        client.post("/predict", {"image": picture()}, HTTP_AUTHORIZATION=f"Basic {API_KEY}")
    )
    assert Prediction.objects.count() == 0
    for key in (API_KEY, OTHER_KEY):
        ok = client.post("/predict", {"image": picture()}, HTTP_AUTHORIZATION=f"Bearer {key}")
        assert ok.status_code == 200, ok.content
    assert Prediction.objects.count() == 2


@pytest.mark.django_db
def test_session_cookie_does_not_open_the_api(admin_client, ready_engine, api_keys):
    # A logged-in admin's browser (or a cross-site form riding on it) has no API key.
    assert "sessionid" in admin_client.cookies
    assert_unauthorized(admin_client.post("/predict", {"image": picture()}))


@pytest.mark.django_db
def test_page_works_without_an_api_key(client, ready_engine, api_keys):
    response = client.post("/", {"image": picture()}, HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert response.json()["success"] is True


@pytest.mark.django_db
def test_api_is_open_without_keys_and_sets_no_cookies(ready_engine):
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.cookies["sessionid"] = "someone-elses-session"
    browser.cookies["csrftoken"] = "x" * 32
    response = browser.post("/predict", {"image": picture()})
    assert response.status_code == 200
    assert not response.cookies  # no session, no CSRF cookie: nothing to ride on
    assert "Cookie" not in response.get("Vary", "")
    # The page is the form a browser posts: there, Django's CSRF check applies.
    page = browser.post("/", {"image": picture()})
    assert page.status_code == 403


@pytest.mark.django_db
def test_filenames_are_stored_as_data_only(client, ready_engine):
    name = "../../etc/passwd<script>.jpg"
    response = client.post("/predict", {"image": picture(name)})
    assert response.status_code == 200
    row = Prediction.objects.get()
    # Django keeps only the base name of an uploaded file; it is text in a column.
    assert row.filename == "passwd<script>.jpg"
    # The row holds the thumbnail, never the upload itself.
    assert len(row.thumbnail) < len(imagegen.jpeg(1))
    assert not any(
        isinstance(getattr(row, field.attname), bytes | memoryview)
        for field in Prediction._meta.fields
        if field.name != "thumbnail"
    )
