"""The upload page in a real browser: Debian's Chromium driven by Playwright, against a
live server with the real ResNet50 (random weights)."""

import os

import pytest

from classifier.models import Prediction

from . import imagegen
from .helpers import CHROMIUM

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
        reason="Debian's chromium is not installed (CI installs it)",
    ),
]


@pytest.fixture
def page(browser, live_server, ready_engine):
    context = browser.new_context(viewport={"width": 1024, "height": 900})
    page = context.new_page()
    page.console_errors = []
    page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))
    page.goto(live_server.url + "/")
    yield page
    context.close()


def test_file_picker_classifies_without_a_reload(page, tmp_path_factory, capsys):
    image = tmp_path_factory.mktemp("upload") / "dog.jpg"
    image.write_bytes(imagegen.jpeg(0, (500, 375)))
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))

    page.set_input_files("#image", str(image))

    page.wait_for_selector("#results .score >> nth=4", timeout=30_000)
    assert page.locator("#results .score").count() == 5
    assert navigations == [], "results appear without a page load"
    assert page.locator("#preview").is_visible()
    percents = page.locator("#results .probability").all_inner_texts()
    assert all(p.endswith("%") for p in percents)
    assert "_" not in "".join(page.locator("#results .label").all_inner_texts())
    assert "meaningless" in page.locator("main .banner").first.inner_text()
    assert page.locator("main .banner").count() == 1, "one random-weights banner, not two"
    assert Prediction.objects.get().source == "web"
    assert page.console_errors == []
    shot = tmp_path_factory.mktemp("screenshots") / "upload-page-results.png"
    page.screenshot(path=str(shot), full_page=True)
    with capsys.disabled():
        print(f"\nscreenshot of the results: {shot}")


def test_dropped_image_is_classified(page):
    data = list(imagegen.png(2, (300, 200)))
    page.evaluate(
        """(bytes) => {
            const file = new File([new Uint8Array(bytes)], "dropped.png", {type: "image/png"});
            const transfer = new DataTransfer();
            transfer.items.add(file);
            const zone = document.getElementById("dropzone");
            zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true}));
        }""",
        data,
    )
    page.wait_for_selector("#results .score >> nth=4", timeout=30_000)
    assert "dropped.png" in page.locator("#results h2").inner_text()
    assert Prediction.objects.get().filename == "dropped.png"
    assert page.console_errors == []


def test_several_images_in_a_row_without_reloading(page, tmp_path_factory):
    folder = tmp_path_factory.mktemp("row")
    for i in range(3):
        path = folder / f"picture{i}.jpg"
        path.write_bytes(imagegen.jpeg(i))
        page.set_input_files("#image", str(path))
        page.wait_for_selector(f"#results h2:has-text('picture{i}.jpg')", timeout=30_000)
    assert Prediction.objects.count() == 3
    assert page.console_errors == []


def test_a_file_that_is_not_an_image_shows_an_error_in_words(page, tmp_path_factory):
    notes = tmp_path_factory.mktemp("bad") / "notes.txt"
    notes.write_text("not a picture")
    page.set_input_files("#image", str(notes))
    error = page.wait_for_selector("#results .error", timeout=10_000)
    assert "not an image" in error.inner_text()
    assert Prediction.objects.count() == 0


def test_a_disguised_non_image_is_refused_by_the_server(page):
    page.evaluate(
        """() => {
            const file = new File(["<html>hello</html>"], "fake.jpg", {type: "image/jpeg"});
            const transfer = new DataTransfer();
            transfer.items.add(file);
            document.getElementById("dropzone").dispatchEvent(
                new DragEvent("drop", {dataTransfer: transfer, bubbles: true}));
        }"""
    )
    error = page.wait_for_selector("#results .error", timeout=30_000)
    assert "not an image" in error.inner_text()
    assert Prediction.objects.count() == 0


def test_page_works_at_phone_width_and_the_drop_zone_takes_the_keyboard(browser, live_server):
    context = browser.new_context(viewport={"width": 375, "height": 740})
    page = context.new_page()
    page.goto(live_server.url + "/")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, "no sideways scrolling at phone width"
    page.keyboard.press("Tab")  # skip link-less page: first stop is the drop zone
    assert page.evaluate("document.activeElement.id") == "dropzone"
    # Enter on the drop zone opens the file picker (a click on the file input; headless
    # Chromium's own chooser event proved unreliable to wait for).
    page.evaluate(
        "document.getElementById('image').addEventListener('click', (e) => {"
        " window.pickerOpened = true; e.preventDefault(); })"
    )
    page.keyboard.press("Enter")
    assert page.evaluate("window.pickerOpened === true")
    assert "curl -X POST -F image=@dog.jpg" in page.locator(".api").inner_text()
    context.close()


def test_pasted_image_is_classified(page):
    data = list(imagegen.png(3, (200, 200)))
    page.evaluate(
        """(bytes) => {
            const file = new File([new Uint8Array(bytes)], "image.png", {type: "image/png"});
            const transfer = new DataTransfer();
            transfer.items.add(file);
            document.dispatchEvent(
                new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true}));
        }""",
        data,
    )
    page.wait_for_selector("#results .score >> nth=4", timeout=30_000)
    assert page.locator("#preview").is_visible()
    assert Prediction.objects.get().source == "web"
    assert page.console_errors == []


def test_too_large_an_image_is_refused_before_uploading(
    browser, live_server, ready_engine, settings
):
    settings.CLASSIFIER_MAX_IMAGE_BYTES = 1000
    context = browser.new_context()
    page = context.new_page()
    page.goto(live_server.url + "/")
    posts = []
    page.on("request", lambda r: r.method == "POST" and posts.append(r.url))
    page.evaluate(
        """(bytes) => {
            const file = new File([new Uint8Array(bytes)], "big.jpg", {type: "image/jpeg"});
            const transfer = new DataTransfer();
            transfer.items.add(file);
            document.getElementById("dropzone").dispatchEvent(
                new DragEvent("drop", {dataTransfer: transfer, bubbles: true}));
        }""",
        list(imagegen.jpeg(0, (640, 480))),
    )
    error = page.wait_for_selector("#results .error", timeout=10_000)
    assert "the limit is" in error.inner_text()
    assert posts == [], "nothing was uploaded"
    context.close()


def test_without_javascript_the_form_posts_and_the_server_renders_five_results(
    browser, live_server, ready_engine, tmp_path_factory
):
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(live_server.url + "/")
    image = tmp_path_factory.mktemp("nojs") / "cat.jpg"
    image.write_bytes(imagegen.jpeg(1))
    page.set_input_files("#image", str(image))
    with page.expect_navigation():
        page.click("button[type=submit]")  # a real form post, with its CSRF token
    assert page.locator("#results .score").count() == 5
    assert "cat.jpg" in page.locator("#results h2").inner_text()
    assert Prediction.objects.get().source == "web"
    context.close()


def test_with_api_keys_the_page_asks_for_one_and_sends_it(page, settings, tmp_path_factory):
    settings.CLASSIFIER_API_KEYS = ["browser-test-key-0123456789abcdef"]
    page.reload()
    image = tmp_path_factory.mktemp("keys") / "dog.jpg"
    image.write_bytes(imagegen.jpeg(0))
    assert page.locator("#api-key").is_visible()
    page.set_input_files("#image", str(image))
    error = page.wait_for_selector("#results .error", timeout=30_000)
    assert "needs an API key" in error.inner_text()  # the page says what to do
    assert page.evaluate("document.activeElement.id") == "api-key"
    assert Prediction.objects.count() == 0
    page.fill("#api-key", "browser-test-key-0123456789abcdef")
    page.click("button[type=submit]")
    page.wait_for_selector("#results .score >> nth=4", timeout=30_000)
    assert Prediction.objects.get().source == "web"
    # A 401 is answered, not a script error.
    assert [e for e in page.console_errors if "401" not in e] == []
