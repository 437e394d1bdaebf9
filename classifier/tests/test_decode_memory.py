"""classifier.decode_memory: what decoding an image costs, known from its header, and the
budget that bounds it in a process and per client."""

import threading
import time

import pytest
from PIL import Image

from classifier.decode_memory import DECODE_BYTES_PER_PIXEL, JPEG_BYTES_PER_PIXEL, DecodeBudget
from classifier.errors import DecoderBusy, ImageTooLarge
from classifier.images import decode_image

from . import imagegen


def test_decode_budget_bounds_concurrent_decoding():
    budget = DecodeBudget(capacity=1000, timeout_s=0.2)
    with budget.hold(500, "a"):
        with budget.hold(500, "b"):  # fits beside it
            assert budget.in_use == 1000
        started = time.monotonic()
        with pytest.raises(DecoderBusy) as refused, budget.hold(500, "b"), budget.hold(1, "c"):
            pass
        assert time.monotonic() - started >= 0.2
        assert refused.value.status == 503
    assert budget.in_use == 0


def test_one_client_holds_at_most_half_and_the_rest_stays_for_others():
    budget = DecodeBudget(capacity=1000, timeout_s=0.1)
    with budget.hold(300, "greedy"):
        # 600 would be over its half.
        with pytest.raises(DecoderBusy, match="300 MB|yours"), budget.hold(300, "greedy"):
            pass
        with budget.hold(500, "honest"):  # everybody else still has room
            assert budget.in_use == 800
    # More than a share: it would never fit.
    with pytest.raises(ImageTooLarge, match="to decode"), budget.hold(501, "anyone"):
        pass


def test_decode_budget_lets_a_waiting_image_in_when_room_is_made():
    budget = DecodeBudget(capacity=1000, timeout_s=5)
    first = budget.hold(400, "a")
    first.__enter__()
    others = budget.hold(400, "b")
    others.__enter__()
    threading.Timer(0.1, first.__exit__, (None, None, None)).start()
    started = time.monotonic()
    with budget.hold(400, "c"):
        waited = time.monotonic() - started
    assert 0.05 < waited < 2
    others.__exit__(None, None, None)


def costs_seen(*files: bytes) -> list[int]:
    budget = DecodeBudget(capacity=10**10, timeout_s=0.1)
    seen = []
    hold = budget.hold
    budget.hold = lambda cost, client: (seen.append(cost), hold(cost, client))[1]
    for data in files:
        decode_image(data, max_bytes=10**8, max_pixels=10**8, budget=budget)
    return seen


def test_decoding_counts_jpegs_at_their_draft_size():
    baseline, png = costs_seen(imagegen.jpeg(0, (4000, 3000)), imagegen.png(0, (400, 300)))
    assert baseline <= 1000 * 750 * JPEG_BYTES_PER_PIXEL  # 12 MP decoded at 1/4 scale or less
    assert png == int(400 * 300 * DECODE_BYTES_PER_PIXEL[("PNG", "RGB")])


def test_a_progressive_jpeg_counts_its_full_size_coefficients():
    # libjpeg keeps 2 bytes per coefficient of every component of the whole picture while
    # the scans of a progressive file arrive, whatever the draft size.
    picture = Image.new("RGB", (40000, 1000))
    progressive, baseline = costs_seen(
        imagegen.encode(picture, "JPEG", progressive=True, subsampling=0),
        imagegen.encode(picture, "JPEG", subsampling=0),
    )
    assert progressive >= 40000 * 1000 * 3 * 2
    assert baseline < progressive / 4  # at its draft size (10000x250)
    subsampled = costs_seen(imagegen.encode(picture, "JPEG", progressive=True))[0]  # 4:2:0
    assert 40000 * 1000 * 3 <= subsampled < progressive
