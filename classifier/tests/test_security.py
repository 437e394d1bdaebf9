"""Web security: deployment settings, HTTPS switches, API keys, cookies, headers."""

import logging
import os
import re
import subprocess
import sys
import time
import types
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings

from classifier.models import Prediction

from . import imagegen
from .helpers import OVERLAYS, render_kustomization, upload

BASE_DIR = Path(settings.BASE_DIR)
API_KEY = "test-api-key-0123456789abcdef"

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


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_settings_pass_check_deploy(overlay):
    result = manage("check", "--deploy", "--fail-level", "WARNING", **kubernetes_env(overlay))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


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


def picture(name: str = "photo.jpg"):
    return upload(imagegen.jpeg(1), name)


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


def scraped_form(browser) -> str:
    """GET / as a browser would, and the CSRF token in its form (its cookie is kept)."""
    page = browser.get("/")
    assert page.status_code == 200
    return re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.content)[1].decode()


@pytest.mark.django_db
def test_a_scraped_csrf_token_does_not_make_the_page_a_keyless_api(ready_engine, api_keys):
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    token = scraped_form(browser)
    as_json = browser.post(
        "/", {"image": picture(), "csrfmiddlewaretoken": token}, HTTP_ACCEPT="application/json"
    )
    assert_unauthorized(as_json)
    assert "API key" in as_json.json()["error"]["message"]
    as_form = browser.post("/", {"image": picture(), "csrfmiddlewaretoken": token})
    assert as_form.status_code == 401
    assert b"needs an API key" in as_form.content
    assert Prediction.objects.count() == 0
    # The page's script sends the key the user typed, in the header.
    with_key = browser.post(
        "/",
        {"image": picture(), "csrfmiddlewaretoken": token},
        HTTP_ACCEPT="application/json",
        HTTP_AUTHORIZATION=f"Bearer {API_KEY}",
    )
    assert with_key.status_code == 200
    assert Prediction.objects.get().source == "web"


@pytest.mark.django_db
def test_a_logged_in_staff_user_uses_the_page_without_a_key(
    admin_client, django_user_model, ready_engine, api_keys
):
    page = admin_client.get("/")
    assert b'id="api-key"' not in page.content  # nothing to ask a staff user for
    assert admin_client.post("/", {"image": picture()}).status_code == 200
    member = django_user_model.objects.create_user("member", password="a long passphrase")
    from django.test import Client

    browser = Client()
    browser.force_login(member)  # logged in, but not staff: needs a key like anyone
    assert b'id="api-key"' in browser.get("/").content
    assert browser.post("/", {"image": picture()}).status_code == 401
    assert Prediction.objects.count() == 1


@pytest.mark.django_db
def test_no_url_classifies_without_a_key_when_keys_are_set(client, ready_engine, api_keys):
    from django.urls import URLPattern, get_resolver

    paths = [
        # A model's name and version, a prediction's id, where the pattern has them.
        re.sub(
            r"<\w+:(model_version|prediction_id)>",
            "1",
            re.sub(r"<\w+:model_name>", "resnet50", path),
        )
        for p in get_resolver().url_patterns
        if isinstance(p, URLPattern)  # the admin is an included URLconf: it classifies nothing
        for path in ["/" + str(p.pattern)]
    ]
    assert {"/", "/predict", "/v1/models/resnet50:predict"} <= set(paths)
    # Triton's repository index takes a POST but classifies nothing: metadata, open.
    paths.remove("/v2/repository/index")
    for path in paths:
        for accept in ("application/json", "text/html"):
            response = client.post(path, {"image": picture()}, HTTP_ACCEPT=accept)
            assert response.status_code in (401, 405), (path, response.status_code)
    assert Prediction.objects.count() == 0


@pytest.mark.django_db
def test_api_keys_never_reach_the_logs(client, ready_engine, api_keys, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="classifier.requests")  # its own level: WARNING
    for key in (API_KEY, "wrong-" + API_KEY):
        client.post("/predict", {"image": picture()}, HTTP_AUTHORIZATION=f"Bearer {key}")
        client.post("/", {"image": picture()}, HTTP_AUTHORIZATION=f"Bearer {key}")
    # Every request's line was logged (with all it carries), and none holds the key.
    assert sum(r.name == "classifier.requests" for r in caplog.records) == 4
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert API_KEY not in logged


@pytest.fixture
def rate_limit(settings, monkeypatch):
    import django_ratelimit.core
    from django.core.cache import cache

    settings.CLASSIFIER_RATE_LIMIT = "2/m"
    # django-ratelimit counts in fixed windows of the clock: a test's requests must not
    # straddle the end of one (the count would start again), so its clock stands still.
    now = float(int(time.time()))
    monkeypatch.setattr(django_ratelimit.core, "time", types.SimpleNamespace(time=lambda: now))
    cache.clear()
    yield
    cache.clear()


@pytest.mark.django_db
def test_a_client_over_the_rate_limit_gets_429_with_retry_after(
    client, ready_engine, api_keys, rate_limit
):
    def send(key, **extra):
        return client.post(
            "/predict", {"image": picture()}, HTTP_AUTHORIZATION=f"Bearer {key}", **extra
        )

    assert [send(API_KEY).status_code for _ in range(2)] == [200, 200]
    limited = send(API_KEY)
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited["Retry-After"]) <= 60
    # Another key is another client, whatever its address.
    assert send(OTHER_KEY).status_code == 200
    # Without a key a client is its address: counted apart from the keys.
    assert send("not-a-key", REMOTE_ADDR="198.51.100.7").status_code == 401
    assert Prediction.objects.count() == 3


@pytest.mark.django_db
def test_without_keys_the_rate_limit_counts_by_address(client, ready_engine, rate_limit):
    def send(address):
        return client.post("/", {"image": picture()}, REMOTE_ADDR=address)

    assert [send("198.51.100.7").status_code for _ in range(3)] == [200, 200, 429]
    assert send("198.51.100.8").status_code == 200


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
    # Besides it, only the image's 2048 pooled features (float16), never its bytes.
    assert len(row.features) == 4096
    assert not any(
        isinstance(getattr(row, field.attname), bytes | memoryview)
        for field in Prediction._meta.fields
        if field.name not in ("thumbnail", "features")
    )


def lockout_count() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("classifier_login_lockouts_total") or 0.0


@pytest.mark.django_db
def test_admin_login_locks_out_a_client_after_too_many_wrong_passwords(
    django_user_model, settings, caplog
):
    from django.test import Client

    settings.AXES_FAILURE_LIMIT = 3
    settings.AXES_COOLOFF_TIME = timedelta(seconds=2)
    django_user_model.objects.create_superuser("ops", "ops@example.com", "right horse battery")
    guesser, colleague = Client(), Client()

    def login(client, password, address="203.0.113.5"):
        return client.post(
            "/admin/login/?next=/admin/",
            {"username": "ops", "password": password},
            REMOTE_ADDR=address,
        )

    before = lockout_count()
    statuses = [login(guesser, f"guess {i}").status_code for i in range(3)]
    assert statuses == [200, 200, 429]  # the form again twice, then locked out
    refused = login(guesser, "right horse battery")
    assert refused.status_code == 429  # even the right password, while locked out
    assert "_auth_user_id" not in guesser.session
    assert lockout_count() >= before + 2
    assert "locked out" in caplog.text
    assert "right horse battery" not in caplog.text
    # The lock is on this user name from this address: the same user elsewhere logs in.
    assert login(colleague, "right horse battery", address="198.51.100.9").status_code == 302
    # Once the lockout time has passed since the last attempt, the right password works.
    time.sleep(2.2)
    assert login(guesser, "right horse battery").status_code == 302


@pytest.mark.django_db
def test_wrong_keys_count_against_the_rate_limit(client, ready_engine, api_keys, rate_limit):
    def guess(key):
        return client.post(
            "/predict", {"image": picture()}, HTTP_AUTHORIZATION=f"Bearer {key}"
        ).status_code

    assert [guess("guess-1"), guess("guess-2")] == [401, 401]
    assert guess("guess-3") == 429, "a third guess within the period is not even judged"


@pytest.mark.django_db
def test_an_ipv6_64_is_one_client_and_the_next_64_another(client, ready_engine, rate_limit):
    def send(address):
        return client.post("/predict", {"image": picture()}, REMOTE_ADDR=address).status_code

    assert send("2001:db8:1:2::1") == 200
    assert send("2001:db8:1:2:ffff:0:0:7") == 200
    assert send("2001:db8:1:2:abcd::9") == 429, "the same /64 under another address"
    assert send("2001:db8:1:3::1") == 200


def test_client_networks_follow_the_configured_prefixes(settings, rf):
    from classifier.access import client_network

    def network(address):
        return client_network(rf.get("/", REMOTE_ADDR=address))

    assert network("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::"
    assert network("203.0.113.77") == "203.0.113.77"
    assert network("::ffff:203.0.113.77") == "203.0.113.77"
    settings.CLASSIFIER_IPV6_PREFIX, settings.CLASSIFIER_IPV4_PREFIX = 48, 24
    assert network("2001:db8:1:2:3:4:5:6") == "2001:db8:1::"
    assert network("203.0.113.77") == "203.0.113.0"


@pytest.mark.django_db
def test_a_user_name_is_locked_after_failures_from_many_addresses(django_user_model, settings):
    from django.test import Client

    settings.AXES_FAILURE_LIMIT = 3
    settings.LOGIN_USERNAME_FAILURE_LIMIT = 4
    django_user_model.objects.create_superuser("ops", "ops@example.com", "right horse battery")

    def login(password, address):
        return Client().post(
            "/admin/login/?next=/admin/",
            {"username": "ops", "password": password},
            REMOTE_ADDR=address,
        )

    # Two guesses from each of two addresses: no client reaches its own limit (3), but the
    # fourth failure of the user name locks it, for every address.
    assert [login(f"guess {i}", "203.0.113.5").status_code for i in range(2)] == [200, 200]
    assert [login(f"guess {i}", "198.51.100.9").status_code for i in range(2)] == [200, 429]
    assert login("right horse battery", "192.0.2.44").status_code == 429
    # Another user name is not affected.
    django_user_model.objects.create_superuser("dev", "dev@example.com", "other horse battery")
    response = Client().post(
        "/admin/login/?next=/admin/",
        {"username": "dev", "password": "other horse battery"},
        REMOTE_ADDR="192.0.2.44",
    )
    assert response.status_code == 302


@pytest.mark.django_db
def test_the_page_refuses_an_anonymous_upload_before_reading_it(ready_engine, api_keys):
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.get("/")  # the CSRF cookie, as a scraper would get it
    token = browser.cookies["csrftoken"].value
    big = upload(b"\xff" * 3_000_000, "big.jpg")
    response = browser.post("/", {"image": big, "csrfmiddlewaretoken": token})
    assert response.status_code == 401
    assert not hasattr(response.wsgi_request, "_files"), "the form was parsed before the 401"


@pytest.mark.django_db
def test_the_page_still_needs_its_csrf_token(admin_user, ready_engine):
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(admin_user)
    response = browser.post("/", {"image": picture()}, HTTP_ACCEPT="application/json")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert not Prediction.objects.exists()
    page = browser.get("/")
    token = page.cookies["csrftoken"].value if "csrftoken" in page.cookies else None
    token = token or browser.cookies["csrftoken"].value
    response = browser.post("/", {"image": picture(), "csrfmiddlewaretoken": token})
    assert response.status_code == 200
    assert Prediction.objects.count() == 1


API_URLS = [
    ("/healthz", ("GET", "HEAD")),
    ("/readyz", ("GET", "HEAD")),
    ("/model", ("GET", "HEAD")),
    ("/openapi.json", ("GET", "HEAD")),
    ("/v2", ("GET", "HEAD")),
    ("/v2/health/live", ("GET", "HEAD")),
    ("/v2/health/ready", ("GET", "HEAD")),
    ("/v2/models/resnet50", ("GET", "HEAD")),
    ("/v2/models/resnet50/ready", ("GET", "HEAD")),
    ("/v2/models/resnet50/infer", ("POST",)),
    ("/predict", ("POST",)),
    ("/", ("GET", "HEAD", "POST")),
]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "allowed", "method"),
    [
        (path, allowed, method)
        for path, allowed in API_URLS
        for method in ("POST", "PUT", "DELETE", "PATCH", "BREW")
        if method not in allowed
    ],
)
def test_every_unknown_method_is_a_json_405_with_allow(path, allowed, method):
    from django.test import Client

    # With CSRF checks on, as a browser-less client meets the server.
    response = Client(enforce_csrf_checks=True).generic(method, path)
    assert response.status_code == 405, response.content[:200]
    assert response["Content-Type"] == "application/json"
    assert response["Allow"] == ", ".join(allowed)
