"""The upload page in a real browser: Debian's Chromium driven by Playwright, against a
live server with the real ResNet50 (random weights)."""

import base64
import io
import os

import numpy as np
import pytest
from django.core.signals import request_started
from PIL import Image

from classifier import explain
from classifier.models import Prediction
from loadtest.load import photo_jpeg

from . import imagegen
from .helpers import CHROMIUM

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
        reason="Debian's chromium is not installed (CI installs it)",
    ),
]


# Drops files on the drop zone at once, as a file manager does: [{name, type, bytes}].
DROP = """(files) => {
    const transfer = new DataTransfer();
    for (const f of files) {
        transfer.items.add(new File([new Uint8Array(f.bytes)], f.name, {type: f.type}));
    }
    const zone = document.getElementById("dropzone");
    zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true}));
    zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true}));
}"""

# Milliseconds from a file chosen in a picker (its change event) to the first result on
# the page, measured by the page's clock: `window.chosenAt`, `window.shownAt`.
STOPWATCH = """() => {
    window.chosenAt = window.shownAt = null;
    document.addEventListener("change", () => { window.chosenAt = performance.now(); }, true);
    new MutationObserver(() => {
        if (window.shownAt === null && document.querySelector("#results .score")) {
            window.shownAt = performance.now();
        }
    }).observe(document.getElementById("results"), {childList: true, subtree: true});
}"""

# The page's request before images were scaled down in the browser: the chosen file, as
# it is, through the same fetch. Milliseconds to its answer.
SEND_AS_IS = """async (input) => {
    const data = new FormData();
    data.append("csrfmiddlewaretoken", document.querySelector("[name=csrfmiddlewaretoken]").value);
    data.append("image", input.files[0], input.files[0].name);
    const started = performance.now();
    const response = await fetch("/", {
        method: "POST", body: data, headers: {Accept: "application/json"},
    });
    const body = await response.json();
    return {ms: performance.now() - started, success: body.success};
}"""


@pytest.fixture
def post_sizes():
    """The body size of each POST the live server receives during the test (its
    Content-Length: what the browser uploaded)."""
    sizes = []

    def received(sender, environ, **kwargs):
        if environ["REQUEST_METHOD"] == "POST":
            sizes.append(int(environ.get("CONTENT_LENGTH") or 0))

    request_started.connect(received)
    yield sizes
    request_started.disconnect(received)


def upright(picture: bytes) -> tuple[bool, str, str]:
    """(portrait?, colour of the top quarter, of the bottom quarter) of a picture whose
    halves are red and blue."""
    pixels = np.asarray(Image.open(io.BytesIO(picture)).convert("RGB"), dtype=np.float32)
    height, width = pixels.shape[:2]

    def colour(region: np.ndarray) -> str:
        red, _, blue = region.reshape(-1, 3).mean(axis=0)
        return "red" if red > blue + 100 else "blue" if blue > red + 100 else "mixed"

    return height > width, colour(pixels[: height // 4]), colour(pixels[-(height // 4) :])


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


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (imagegen.jpeg(0, (640, 480)), "is still"),  # decoded and made a JPEG again
        (b"\xff\xd8\xff" + bytes(5000), "is 5 KB"),  # not decodable: as it is
    ],
    ids=["image", "undecodable"],
)
def test_a_file_too_large_even_once_scaled_down_is_refused_before_uploading(
    browser, live_server, ready_engine, settings, data, said, post_sizes
):
    settings.CLASSIFIER_MAX_IMAGE_BYTES = 1000
    context = browser.new_context()
    page = context.new_page()
    page.goto(live_server.url + "/")
    page.evaluate(DROP, [{"name": "big.jpg", "type": "image/jpeg", "bytes": list(data)}])
    error = page.wait_for_selector("#results .error", timeout=10_000)
    assert said in error.inner_text()
    assert "the limit is 1 KB" in error.inner_text()
    assert post_sizes == [], "nothing was uploaded"
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


def test_a_12_mp_photo_is_scaled_down_in_the_browser_before_uploading(
    page, tmp_path, settings, capsys, post_sizes
):
    photo = tmp_path / "IMG_0001.jpg"
    photo.write_bytes(photo_jpeg(4000, 3000))  # a phone photo's pixels and weight
    assert photo.stat().st_size > 1_500_000
    page.evaluate(STOPWATCH)

    page.set_input_files("#image", str(photo))

    page.wait_for_selector("#results .score >> nth=4", timeout=30_000)
    assert "IMG_0001.jpg" in page.locator("#results h2").inner_text()
    assert len(post_sizes) == 1
    assert 10_000 < post_sizes[0] < 600_000, f"{post_sizes[0]} bytes sent"
    row = Prediction.objects.get()
    assert (row.width, row.height, row.image_format) == (1024, 768, "JPEG")
    assert row.filename == "IMG_0001.jpg"
    assert page.console_errors == []
    scaled_ms = page.evaluate("window.shownAt - window.chosenAt")
    page.evaluate(
        "document.body.append(Object.assign(document.createElement('input'),"
        " {type: 'file', id: 'as-is', hidden: true}))"
    )
    page.set_input_files("#as-is", str(photo))
    as_is = page.eval_on_selector("#as-is", SEND_AS_IS)
    assert as_is["success"] is True
    with capsys.disabled():
        print(
            f"\n12 MP photo ({photo.stat().st_size / 1e6:.1f} MB), in the page: chosen to "
            f"result shown {scaled_ms:.0f} ms, {post_sizes[0] / 1e3:.0f} KB sent; the file as it "
            f"is through the same fetch: {as_is['ms']:.0f} ms to the answer"
        )


@pytest.mark.parametrize(
    ("stored", "sent"),
    [((400, 200), (200, 400)), ((2400, 1200), (512, 1024))],
    ids=["sent-as-is", "scaled-down"],
)
def test_a_photo_stored_sideways_shows_and_is_recorded_the_right_way_up(
    page, tmp_path, stored, sent
):
    photo = tmp_path / "portrait.jpg"
    photo.write_bytes(imagegen.sideways_jpeg(stored, (220, 30, 30), (30, 30, 220)))

    page.set_input_files("#image", str(photo))

    page.wait_for_selector("#results .score >> nth=4", timeout=30_000)
    red_on_top = (True, "red", "blue")
    assert upright(page.locator("#preview").screenshot()) == red_on_top
    assert upright(page.locator("#results .thumb").screenshot()) == red_on_top
    row = Prediction.objects.get()
    assert (row.width, row.height) == sent
    assert upright(bytes(row.thumbnail)) == red_on_top
    assert page.console_errors == []


def test_three_images_dropped_at_once_are_one_request_and_three_cards_in_order(page, post_sizes):
    names = ["first.png", "second.jpg", "third.png"]
    files = [
        {"name": names[0], "type": "image/png", "bytes": list(imagegen.png(0, (300, 200)))},
        {"name": names[1], "type": "image/jpeg", "bytes": list(imagegen.jpeg(1, (200, 300)))},
        {"name": names[2], "type": "image/png", "bytes": list(imagegen.png(2, (250, 250)))},
    ]
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.evaluate(DROP, files)
    page.wait_for_selector("#results .card >> nth=2 >> .score >> nth=4", timeout=30_000)

    cards = page.locator("#results .card")
    assert cards.count() == 3
    assert cards.locator("h2").all_inner_texts() == [f"Top 5 for {name}" for name in names]
    assert all(thumb.is_visible() for thumb in cards.locator(".thumb").all())
    assert page.locator("#preview").is_hidden(), "the cards show the pictures"
    assert len(post_sizes) == 1
    assert answer.value.json()["batch_size"] == 3
    rows = list(Prediction.objects.order_by("id"))
    assert [row.filename for row in rows] == names
    for card, row in zip(cards.all(), rows, strict=True):
        assert card.locator(".label").first.inner_text() == row.top_label.replace("_", " ")
        assert card.locator(".probability").first.inner_text() == f"{row.top_probability:.1%}"
    assert page.console_errors == []


def test_a_photo_over_the_size_limit_works_from_the_page_once_scaled_down(
    page, tmp_path, settings, post_sizes
):
    photo = tmp_path / "heavy.jpg"
    photo.write_bytes(imagegen.noisy_jpeg((4000, 2500)))
    assert photo.stat().st_size > settings.CLASSIFIER_MAX_IMAGE_BYTES

    page.set_input_files("#image", str(photo))

    page.wait_for_selector("#results .score >> nth=4", timeout=60_000)
    assert "heavy.jpg" in page.locator("#results h2").inner_text()
    assert len(post_sizes) == 1
    assert 0 < post_sizes[0] < settings.CLASSIFIER_MAX_IMAGE_BYTES
    row = Prediction.objects.get()
    assert (row.width, row.height) == (1024, 640)
    assert page.console_errors == []


def test_a_touch_screen_gets_a_take_a_photo_button_for_the_camera(
    browser, live_server, ready_engine, tmp_path
):
    phone = browser.new_context(
        viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True
    )
    page = phone.new_page()
    page.goto(live_server.url + "/")
    camera = page.get_by_label("Take a photo")  # its label names it
    assert camera.get_attribute("type") == "file"
    assert camera.get_attribute("capture") == "environment"
    assert camera.get_attribute("accept") == "image/*"
    assert page.get_by_text("Take a photo").is_visible()
    page.focus("#image")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "camera"
    photo = tmp_path / "camera.jpg"
    photo.write_bytes(imagegen.jpeg(4, (1600, 1200)))
    camera.set_input_files(str(photo))  # what the camera hands the page
    page.wait_for_selector("#results .score >> nth=4", timeout=30_000)
    assert "camera.jpg" in page.locator("#results h2").inner_text()
    assert Prediction.objects.get().width == 1024
    phone.close()

    desktop = browser.new_context()
    page = desktop.new_page()
    page.goto(live_server.url + "/")
    assert page.get_by_text("Take a photo").is_hidden(), "no camera button on a desktop"
    desktop.close()


def data_uri_image(uri: str) -> Image.Image:
    """The image in a `data:image/png;base64,...` URI; fails on any other kind."""
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:40]
    return Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :])))


def map_colours(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """What explain.overlay_png colours for `grid` over a picture of `size`: the map
    upscaled bilinearly by Pillow, on the colour scale. (height, width, 3) ints."""
    heat = Image.fromarray(grid.astype(np.float32)).resize(size, Image.Resampling.BILINEAR)
    return explain.colours(np.asarray(heat)).astype(int)


@pytest.mark.parametrize("size", [(500, 375), (200, 600)], ids=["landscape", "tall"])
def test_where_it_looked_lays_the_map_over_the_picture(page, tmp_path, capsys, size):
    picture = tmp_path / "dog.jpg"
    picture.write_bytes(imagegen.jpeg(0, size))
    switch = page.get_by_role("switch", name="Where it looked")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.set_input_files("#image", str(picture))
    page.wait_for_selector("#results .score >> nth=4", timeout=30_000)
    explanation = answer.value.json()["results"][0]["explanation"]
    grid = np.array(explanation["grid"])
    label = explanation["label"].replace("_", " ")
    card = page.locator("#results .card")
    overlay = card.locator(".overlay")
    legend = page.locator("#map-legend")
    assert switch.is_visible()
    assert not switch.is_checked()
    assert overlay.is_hidden(), "off at first: the plain picture"
    assert legend.is_hidden()

    page.focus("#map-switch")
    page.keyboard.press("Space")

    assert switch.is_checked()
    assert overlay.is_visible()
    picture_box = card.locator(".thumb").bounding_box()
    overlay_box = overlay.bounding_box()
    # With the maps shown a picture gets up to 14rem (224 px) a side, its ratio kept.
    assert picture_box["height"] <= 224
    assert picture_box["width"] <= 224
    assert max(picture_box["width"], picture_box["height"]) > 128
    for side in ("x", "y", "width", "height"):
        assert abs(overlay_box[side] - picture_box[side]) <= 1, (overlay_box, picture_box)
    assert legend.is_visible()
    assert legend.inner_text().split() == ["less", "more"]
    assert card.locator(".map-caption").inner_text() == f"Where it looked ({label})"
    # The colour bar's ends, a few pixels in (its box may start mid-pixel): the scale's.
    scale = np.asarray(Image.open(io.BytesIO(page.locator("#map-scale").screenshot())))
    less, more = explain.colours(np.array([0.0, 1.0])).astype(int)
    assert np.abs(scale[6, 2, :3].astype(int) - less).max() <= 16  # violet
    assert np.abs(scale[6, -3, :3].astype(int) - more).max() <= 16  # yellow

    drawn = data_uri_image(overlay.evaluate("(canvas) => canvas.toDataURL()")).convert("RGB")
    assert abs(drawn.width / drawn.height - size[0] / size[1]) < 0.01
    pixels = np.asarray(drawn, dtype=int)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20, "a map, not one colour"
    # Its most yellow pixel is in the grid's brightest cell: the scale's yellow end is
    # where red + green - blue is highest, and grows all along the scale.
    yellowness = pixels[..., 0] + pixels[..., 1] - pixels[..., 2]
    y, x = np.unravel_index(yellowness.argmax(), yellowness.shape)
    brightest = np.unravel_index(grid.argmax(), grid.shape)
    cell = (int((y + 0.5) / drawn.height * 7), int((x + 0.5) / drawn.width * 7))
    assert cell == brightest, (cell, brightest, grid)
    # Cell by cell, the colours the server draws without JavaScript (explain.overlay_png).
    assert np.abs(pixels - map_colours(grid, drawn.size)).max() <= 2

    assert overlay.evaluate("(canvas) => getComputedStyle(canvas).opacity") == "0.5"
    shot = tmp_path / "card-where-it-looked.png"
    card.screenshot(path=str(shot))
    with capsys.disabled():
        print(f"\nscreenshot of a card with its map: {shot}")
    page.fill("#map-opacity", "100")
    assert overlay.evaluate("(canvas) => getComputedStyle(canvas).opacity") == "1"
    assert page.locator("#map-opacity-value").inner_text() == "100%"
    # What shows is the map, over the picture (not under it).
    seen = np.asarray(Image.open(io.BytesIO(card.locator(".picture").screenshot())).convert("RGB"))
    expected = map_colours(grid, (seen.shape[1], seen.shape[0]))
    assert np.abs(seen.astype(int) - expected).mean() < 12

    page.reload()  # the switch and the opacity are kept for the tab
    page.set_input_files("#image", str(picture))
    page.wait_for_selector("#results .score >> nth=4", timeout=30_000)
    assert switch.is_checked()
    assert overlay.is_visible()
    assert overlay.evaluate("(canvas) => getComputedStyle(canvas).opacity") == "1"

    page.get_by_text("Where it looked", exact=True).click()  # its label
    assert not switch.is_checked()
    assert overlay.is_hidden()
    assert legend.is_hidden()
    assert card.locator(".map-caption").is_hidden()
    assert card.locator(".thumb").is_visible()
    assert page.console_errors == []


def test_without_javascript_each_card_shows_where_it_looked(
    browser, live_server, ready_engine, tmp_path
):
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(live_server.url + "/")
    assert page.locator("#map-switch").is_hidden(), "no switch without the script"
    names = ["cat.jpg", "tall.png"]
    (tmp_path / names[0]).write_bytes(imagegen.jpeg(1, (400, 300)))
    (tmp_path / names[1]).write_bytes(imagegen.png(2, (150, 450)))
    page.set_input_files("#image", [str(tmp_path / name) for name in names])
    with page.expect_navigation():
        page.click("button[type=submit]")

    maps = page.locator("#results .card .map")
    assert maps.count() == 2
    rows = list(Prediction.objects.order_by("id"))
    for figure, row in zip(maps.all(), rows, strict=True):
        assert figure.is_visible()
        caption = f"Where it looked ({row.top_label.replace('_', ' ')})"
        assert figure.locator("figcaption").inner_text() == caption
        drawn = data_uri_image(figure.locator("img").get_attribute("src"))
        thumbnail = Image.open(io.BytesIO(bytes(row.thumbnail)))
        assert drawn.format == "PNG"
        assert drawn.size == thumbnail.size
        expected = Image.open(
            io.BytesIO(explain.overlay_png(bytes(row.thumbnail), row.activation_map))
        )
        assert np.array_equal(np.asarray(drawn), np.asarray(expected))
        plain = np.asarray(thumbnail.convert("RGB"), dtype=int)
        assert np.abs(np.asarray(drawn.convert("RGB"), dtype=int) - plain).mean() > 10
    context.close()
