""" "Right?" under each card of the upload page, in a real browser (Debian's Chromium
driven by Playwright) against a live server with the real ResNet50 (random weights):
with JavaScript (no reload), without (the forms post and the page comes back), on a
phone, and with API keys set; and the form's refusals through Django's test client."""

import os
import re

import pytest
from playwright.sync_api import expect

from classifier import feedback, services
from classifier.models import Prediction

from . import imagegen
from .helpers import CHROMIUM, upload

browser_test = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (CI installs it)",
)
KEY = "feedback-page-key-0123456789abcdef"


def distinct_names() -> int:
    return len({label.name.replace("_", " ") for label in services.labels()})


def another_class(row: Prediction) -> str:
    """A class the model did not put first, as the page shows it."""
    return next(s["label"] for s in row.top_k[1:]).replace("_", " ")


@pytest.fixture
def open_page(browser, live_server, ready_engine):
    contexts = []

    def opened(**options):
        context = browser.new_context(**options)
        contexts.append(context)
        page = context.new_page()
        page.errors = []
        page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        page.goto(live_server.url + "/")
        return page

    yield opened
    for context in contexts:
        context.close()


def classify(page, tmp_path, count: int = 1, script: bool = True) -> list[Prediction]:
    files = []
    for i in range(count):
        files.append(tmp_path / f"picture-{i}.jpg")
        files[-1].write_bytes(imagegen.jpeg(i + 3, (320, 240)))
    page.set_input_files("#image", [str(f) for f in files])
    if not script:
        with page.expect_navigation():
            page.click("#classify-form button[type=submit]")
    page.wait_for_selector(f"#results .card >> nth={count - 1} >> .feedback", timeout=30_000)
    return list(Prediction.objects.order_by("id"))


@browser_test
@pytest.mark.django_db(transaction=True)
def test_with_javascript_yes_and_no_are_recorded_without_a_reload(open_page, tmp_path):
    page = open_page(viewport={"width": 1024, "height": 900})
    (row,) = classify(page, tmp_path)
    page.evaluate("window.notReloaded = true")
    card = page.locator("#results .card").first
    status = card.locator(".recorded")

    card.get_by_role("button", name="Yes").click()
    expect(status).to_have_text("Recorded: right.")
    row.refresh_from_db()
    assert (row.feedback, row.corrected_label) == ("confirmed", row.top_label)

    # "No" opens a searchable choice of every class the model has.
    field = card.get_by_label("What is it?")
    assert field.is_hidden()
    card.locator("summary", has_text="No").click()
    assert field.is_visible()
    expect(field).to_be_focused()
    expect(page.locator("#class-names option")).to_have_count(distinct_names())
    right = another_class(row)
    field.fill(right)
    field.press("Enter")  # Enter sends the class, never "Yes"
    expect(status).to_have_text(f"Recorded: it is {right}.")
    assert field.is_hidden(), "the choice closes once recorded"
    row.refresh_from_db()
    assert row.feedback == "corrected"
    assert row.corrected_label.replace("_", " ") == right

    card.locator("summary", has_text="No").click()
    card.get_by_role("button", name="None of these").click()
    expect(status).to_have_text("Recorded: none of these classes.")
    row.refresh_from_db()
    assert (row.feedback, row.corrected_label) == ("none", "")

    card.locator("summary", has_text="No").click()
    field.fill("no such class at all")
    card.get_by_role("button", name="Send").click()
    expect(card.locator(".recorded.error")).to_contain_text(
        "The model has no class 'no such class at all'"
    )
    row.refresh_from_db()
    assert row.feedback == "none", "a refused answer changes nothing"
    assert page.evaluate("window.notReloaded") is True
    assert [e for e in page.errors if "400" not in e] == []


@browser_test
@pytest.mark.django_db(transaction=True)
def test_without_javascript_the_forms_post_and_every_card_comes_back(open_page, tmp_path):
    page = open_page(java_script_enabled=False)
    first, second = classify(page, tmp_path, count=2, script=False)
    cards = page.locator("#results .card")
    assert page.locator("#class-names option").count() == distinct_names()

    with page.expect_navigation():
        cards.nth(1).get_by_role("button", name="Yes").click()
    assert page.url.endswith(f"/feedback#card-{second.pk}")
    assert cards.count() == 2, "both cards come back"
    assert cards.nth(1).locator(".recorded").inner_text() == "Recorded: right."
    assert cards.nth(0).locator(".recorded").is_hidden(), "nothing said of the first yet"
    assert cards.nth(0).locator("h2").inner_text() == "Top 5 for picture-0.jpg"
    second.refresh_from_db()
    assert second.feedback == "confirmed"

    cards.nth(0).locator("summary", has_text="No").click()  # <details>: no script needed
    right = another_class(first)
    cards.nth(0).get_by_label("What is it?").fill(right)
    with page.expect_navigation():
        cards.nth(0).get_by_label("What is it?").press("Enter")
    assert cards.nth(0).locator(".recorded").inner_text() == f"Recorded: it is {right}."
    assert cards.nth(1).locator(".recorded").inner_text() == "Recorded: right."
    first.refresh_from_db()
    assert first.feedback == "corrected"

    cards.nth(0).locator("summary", has_text="No").click()
    cards.nth(0).get_by_label("What is it?").fill("unicorn")
    with page.expect_navigation() as navigation:
        cards.nth(0).get_by_role("button", name="Send").click()
    assert navigation.value.status == 400
    assert "The model has no class 'unicorn'" in cards.nth(0).locator(".recorded").inner_text()
    first.refresh_from_db()
    assert first.feedback == "corrected"


@browser_test
@pytest.mark.django_db(transaction=True)
def test_on_a_phone_the_choice_fits_and_takes_a_tap(open_page, tmp_path):
    page = open_page(viewport={"width": 360, "height": 740}, has_touch=True, is_mobile=True)
    (row,) = classify(page, tmp_path)
    card = page.locator("#results .card").first
    card.locator("summary", has_text="No").tap()
    field = card.get_by_label("What is it?")
    assert field.is_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 360, "no sideways scroll"
    for name in ("Send", "None of these"):
        box = card.get_by_role("button", name=name).bounding_box()
        assert box["x"] + box["width"] <= 360
        assert box["height"] >= 44, "a finger-sized target"
    card.get_by_role("button", name="None of these").tap()
    expect(card.locator(".recorded")).to_have_text("Recorded: none of these classes.")
    row.refresh_from_db()
    assert row.feedback == "none"
    assert page.errors == []


@browser_test
@pytest.mark.django_db(transaction=True)
def test_with_api_keys_the_page_sends_its_key_with_the_feedback(open_page, settings, tmp_path):
    settings.CLASSIFIER_API_KEYS = [KEY]
    page = open_page()
    page.fill("#api-key", KEY)
    (row,) = classify(page, tmp_path)
    card = page.locator("#results .card").first
    page.fill("#api-key", "not-the-key-0123456789")
    card.get_by_role("button", name="Yes").click()
    expect(card.locator(".recorded.error")).to_contain_text("needs an API key")
    assert page.evaluate("document.activeElement.id") == "api-key"
    row.refresh_from_db()
    assert row.feedback == ""

    page.fill("#api-key", KEY)
    card.get_by_role("button", name="Yes").click()
    expect(card.locator(".recorded:not(.error)")).to_have_text("Recorded: right.")
    row.refresh_from_db()
    assert row.feedback == "confirmed"


def post_form(client, row: Prediction, token: str, shown: list[str], **fields):
    return client.post(
        "/feedback",
        {"prediction_id": row.pk, "token": token, "shown": shown, **fields},
    )


@pytest.mark.django_db
def test_the_form_refuses_a_wrong_token_and_shows_only_cards_whose_token_is_right(
    client, ready_engine
):
    for seed in (1, 2):
        answer = client.post("/", {"image": upload(imagegen.jpeg(seed))}, HTTP_ACCEPT="text/html")
        assert answer.status_code == 200
    mine, theirs = Prediction.objects.order_by("id")
    shown = [f"{mine.pk}.{feedback.token(mine.pk)}", f"{theirs.pk}.forged"]

    refused = post_form(client, mine, "forged", shown, answer="yes")
    assert refused.status_code == 403
    assert "not the feedback token" in refused.content.decode()
    mine.refresh_from_db()
    assert mine.feedback == ""

    recorded = post_form(client, mine, feedback.token(mine.pk), shown, answer="yes")
    assert recorded.status_code == 200
    page = recorded.content.decode()
    assert "Recorded: right." in page
    assert len(re.findall(r'<article class="card"', page)) == 1, "a forged entry shows nothing"
    assert f'id="card-{theirs.pk}"' not in page
    mine.refresh_from_db()
    assert mine.feedback == "confirmed"

    empty = post_form(client, mine, feedback.token(mine.pk), shown, answer="label", label=" ")
    assert empty.status_code == 400
    assert "Type the right class" in empty.content.decode()
    assert client.get("/feedback").status_code == 302


@pytest.mark.django_db
def test_the_form_needs_its_csrf_token_and_with_keys_a_staff_session(
    client, admin_client, ready_engine, settings
):
    admin_client.post("/", {"image": upload(imagegen.jpeg(1))}, HTTP_ACCEPT="text/html")
    row = Prediction.objects.get()
    fields = {"prediction_id": row.pk, "token": feedback.token(row.pk), "answer": "yes"}

    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    assert strict.post("/feedback", fields).status_code == 403
    settings.CLASSIFIER_API_KEYS = [KEY]
    assert client.post("/feedback", fields).status_code == 401
    row.refresh_from_db()
    assert row.feedback == ""
    answer = admin_client.post("/feedback", fields, HTTP_ACCEPT="application/json")
    assert answer.status_code == 200
    assert answer.json()["feedback"] == "confirmed"
