"""The OpenAPI description (classifier/openapi.yaml): valid OpenAPI 3.1, served at
/openapi.json, true to the real answers (the `client` fixture checks every answer to a
described path, so every test through it checks the description too), and rendered at /api/
by Swagger UI from our own origin."""

import base64
import copy
import json
import re

import pytest
import yaml
from django.core.management import call_command
from django.test import Client
from django.urls import URLPattern, get_resolver, resolve
from openapi_core import OpenAPI
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from classifier import openapi as docs
from classifier import runtime
from classifier.middleware import CONTENT_SECURITY_POLICY
from classifier.models import Prediction

from . import helpers, imagegen

V2_INFER = "/v2/models/resnet50/infer"


def described() -> dict:
    """The YAML file as it is on disk, not the view's cached copy."""
    return yaml.safe_load(docs.DESCRIPTION_FILE.read_text(encoding="utf-8"))


def test_the_description_is_valid_openapi_3_1():
    description = described()
    assert description["openapi"] == "3.1.0"
    validate(description)
    # The validator does catch a broken description: here a schema with a type JSON Schema
    # does not have.
    broken = copy.deepcopy(description)
    broken["components"]["schemas"]["ClassScore"]["properties"]["index"]["type"] = "int"
    with pytest.raises(OpenAPIValidationError):
        validate(broken)


def test_openapi_json_serves_the_yaml_file(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == described()


def test_every_api_route_is_described_and_every_described_path_is_routed():
    routed = {
        pattern.callback
        for pattern in get_resolver().url_patterns
        # The pages and their forms are not the API (the admin is an included URLconf).
        if isinstance(pattern, URLPattern)
        and pattern.name not in ("index", "page-feedback", "api-docs")
    }
    concrete = [
        path.replace("{model_name}", "resnet50")
        .replace("{model_version}", "1")
        .replace("{prediction_id}", "7")
        for path in described()["paths"]
    ]
    assert {resolve(path).func for path in concrete} == routed


@pytest.mark.django_db
def test_answers_that_differ_from_the_description_are_caught():
    healthz = Client().get("/healthz")  # a plain client: no check of its own
    assert helpers.openapi_errors(healthz) == []

    healthz.content = b'{"status": "fine"}'
    errors = helpers.openapi_errors(healthz)
    assert errors
    assert "fine" in str(errors)

    healthz.status_code = 418
    assert "418" in str(helpers.openapi_errors(healthz))

    runtime.engine_slot.set(None)
    not_ready = Client().get("/readyz")
    assert not_ready.status_code == 503
    assert helpers.openapi_errors(not_ready) == []
    del not_ready["Retry-After"]
    assert "Retry-After" in str(helpers.openapi_errors(not_ready))

    # What the description leaves out is not checked: the page, a method it does not list.
    assert helpers.openapi_errors(Client().get("/")) is None
    assert helpers.openapi_errors(Client().head("/healthz")) is None


@pytest.mark.django_db
def test_the_client_fixture_fails_a_test_when_the_description_is_wrong(client, monkeypatch):
    wrong = copy.deepcopy(docs.description())
    schema = wrong["paths"]["/healthz"]["get"]["responses"]["200"]["content"]["application/json"]
    schema["schema"]["properties"]["status"] = {"const": "fine"}
    monkeypatch.setattr(helpers, "openapi", lambda: OpenAPI.from_dict(wrong))
    with pytest.raises(AssertionError, match=r"GET /healthz answered 200, which .* not describe"):
        client.get("/healthz")
    monkeypatch.undo()
    assert client.get("/healthz").json() == {"status": "ok"}


@pytest.mark.django_db
def test_binary_inference_answers_as_the_description_says(client, ready_engine):
    message = {
        "id": "7",
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(imagegen.jpeg(0)).decode()],
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}],
        "parameters": {"binary_data_output": True},
    }
    response = client.post(V2_INFER, json.dumps(message), content_type="application/json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/octet-stream"
    length = int(response["Inference-Header-Content-Length"])
    header = json.loads(response.content[:length])
    output = header["outputs"][0]
    assert (header["id"], output["datatype"], output["shape"]) == ("7", "BYTES", [1, 3])
    assert output["parameters"]["binary_data_size"] == len(response.content) - length
    assert Prediction.objects.count() == 1


def test_the_api_reference_page_loads_swagger_ui_from_our_static_files(client):
    response = client.get("/api/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-url="/openapi.json"' in html
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts, "the page has its scripts"
    assert all(re.search(r'\ssrc="/static/', tag) for tag in scripts), "no inline script"
    assert "/static/swagger-ui/swagger-ui-bundle.js" in html
    assert "<style" not in html
    # The site's policy, unrelaxed.
    assert response["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert client.post("/api/").status_code == 405


@pytest.mark.slow  # collectstatic / a Keras ResNet50 of its own: seconds
def test_collectstatic_ships_what_the_reference_page_loads_and_not_redoc(
    client, settings, tmp_path
):
    settings.STATIC_ROOT = tmp_path
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }
    call_command("collectstatic", "--noinput", verbosity=0)
    html = client.get("/api/").content.decode()
    loaded = re.findall(r'(?:src|href)="/static/([^"]+)"', html)
    assert any(re.search(r"swagger-ui-bundle\.[0-9a-f]{12}\.js$", name) for name in loaded)
    assert [name for name in loaded if not (tmp_path / name).is_file()] == []
    assert not list(tmp_path.rglob("redoc*")), "Redoc is not used"


def test_the_upload_page_links_to_the_api_reference(client):
    page = client.get("/")
    assert b'href="/api/"' in page.content


@pytest.mark.django_db(transaction=True)
def test_the_api_reference_renders_every_path_without_leaving_our_origin(browser, live_server):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    requested, errors = [], []
    page.on("request", lambda request: requested.append(request.url))
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))

    page.goto(live_server.url + "/api/")

    infer = page.locator('.opblock-summary-path[data-path="/v2/models/{model_name}/infer"]')
    infer.wait_for(timeout=30_000)
    assert page.locator('.opblock-summary-path[data-path="/predict"]').is_visible()
    shown = page.locator(".opblock-summary-path").evaluate_all(
        "spans => spans.map(span => span.dataset.path)"
    )
    assert sorted(set(shown)) == sorted(described()["paths"])
    assert "ResNet50 image classifier" in page.locator(".info .title").inner_text()
    assert errors == [], "no script error, and nothing the Content-Security-Policy refused"
    foreign = [
        url for url in requested if not url.startswith((live_server.url + "/", "data:", "blob:"))
    ]
    assert foreign == []
    assert live_server.url + "/openapi.json" in requested
    context.close()


@pytest.mark.django_db(transaction=True)
def test_try_it_out_classifies_the_example_image_from_the_reference(
    browser, live_server, ready_engine
):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(live_server.url + "/api/#/inference-protocol/v2Infer")
    operation = page.locator("#operations-inference-protocol-v2Infer")
    operation.wait_for(timeout=30_000)

    operation.locator("button.try-out__btn").click()
    operation.locator('input[placeholder="model_name"]').fill("resnet50")
    operation.locator("button.execute").click()  # the example body: a PNG, top 5

    status = operation.locator(".live-responses-table tr.response .response-col_status")
    status.wait_for(timeout=30_000)
    assert status.inner_text().strip() == "200"
    shown = operation.locator(".live-responses-table .microlight").first.inner_text()
    assert re.search(r'"\d\.\d+:\d+:\w+"', shown), "score:index:label strings"
    assert Prediction.objects.get().source == "v2"
    context.close()
