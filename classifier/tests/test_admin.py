import csv
import importlib
import io
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import clear_url_caches
from django.utils import timezone

from classifier.images import decode_image
from classifier.models import Prediction

from . import imagegen
from .helpers import upload

pytestmark = pytest.mark.django_db
URL = "/admin/classifier/prediction/"


@pytest.fixture(scope="module")
def thumbnail():
    return decode_image(imagegen.jpeg(0), max_bytes=10**7, max_pixels=10**8).thumbnail


def make(thumbnail, count=1, **fields):
    defaults = {
        "source": "api", "filename": "dog.jpg", "sha256": "ab" * 32, "width": 500,
        "height": 375, "image_format": "JPEG", "thumbnail": thumbnail,
        "top_k": [
            {"label": "beagle", "probability": 0.9, "wnid": "n02088364", "index": 162},
            {"label": "Walker_hound", "probability": 0.05, "wnid": "n02089867", "index": 166},
        ],
        "top_label": "beagle", "top_probability": 0.9, "inference_ms": 50.0, "total_ms": 60.0,
        "model_name": "ResNet50", "weights": "imagenet", "engine": "tensorflow",
    }  # fmt: skip
    defaults.update(fields)
    return Prediction.objects.bulk_create([Prediction(**defaults) for _ in range(count)])


def test_changelist_and_detail_render_with_thumbnails(admin_client, thumbnail):
    row = make(thumbnail, filename="holiday.jpg")[0]
    page = admin_client.get(URL)
    assert page.status_code == 200
    assert b"data:image/jpeg;base64," in page.content
    assert b"holiday.jpg" in page.content
    assert b"90.0%" in page.content
    detail = admin_client.get(f"{URL}{row.pk}/change/")
    assert detail.status_code == 200
    body = detail.content.decode()
    assert 'height="160"' in body or 'height="120"' in body
    for shown in ("Walker_hound", "n02089867", "5.00%", "500 x 375", "ab" * 32, "tensorflow"):
        assert shown in body


def test_non_staff_users_are_sent_to_login(client, django_user_model, thumbnail):
    make(thumbnail)
    user = django_user_model.objects.create_user("visitor", password="pw-123456789")
    client.force_login(user)
    response = client.get(URL)
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_changelist_queries_do_not_grow_with_the_rows(admin_client, thumbnail):
    make(thumbnail, 10)
    with CaptureQueriesContext(connection) as ten:
        assert admin_client.get(URL).status_code == 200
    make(thumbnail, 990)
    with CaptureQueriesContext(connection) as thousand:
        assert admin_client.get(URL).status_code == 200
    assert len(thousand) == len(ten)


def test_filters_and_search_find_the_right_rows(admin_client, thumbnail):
    make(thumbnail, 2, source="web", top_label="tabby", filename="cat.png")
    make(thumbnail, 3, source="api", top_label="beagle", filename="dog.jpg")
    assert admin_client.get(URL, {"source__exact": "web"}).context["cl"].result_count == 2
    # The report's links name a label (no list filter: there are 1000).
    assert admin_client.get(URL, {"top_label__exact": "beagle"}).context["cl"].result_count == 3
    assert admin_client.get(URL, {"q": "cat.png"}).context["cl"].result_count == 2
    assert admin_client.get(URL, {"q": "tabby"}).context["cl"].result_count == 2


def test_feedback_is_a_column_a_filter_and_in_the_export(admin_client, thumbnail):
    make(thumbnail, 2, feedback="confirmed", corrected_label="beagle")
    make(thumbnail, 1, feedback="corrected", corrected_label="Walker_hound")
    make(thumbnail, 1, feedback="none")
    rows = make(thumbnail, 3)
    for value, count in (("confirmed", 2), ("corrected", 1), ("none", 1)):
        assert admin_client.get(URL, {"feedback__exact": value}).context["cl"].result_count == count
    listing = admin_client.get(URL).content.decode()
    assert "it is Walker hound" in listing
    assert "none of these" in listing
    table = export(admin_client, Prediction.objects.all())
    said = sorted((r["feedback"], r["corrected_label"]) for r in table)
    assert said == sorted(
        [("confirmed", "beagle")] * 2
        + [("corrected", "Walker_hound"), ("none", "")]
        + [("", "")] * len(rows)
    )


def test_csv_export_has_the_selected_rows_and_columns(admin_client, thumbnail):
    rows = make(thumbnail, 3)
    chosen = [rows[0].pk, rows[2].pk]
    response = admin_client.post(
        URL, {"action": "export_csv", "_selected_action": chosen, "index": 0}
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response.streaming
    table = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert sorted(int(r["id"]) for r in table) == sorted(chosen)
    assert table[0]["top_label"] == "beagle"
    assert table[0]["top_k"] == "beagle:0.900000;Walker_hound:0.050000"
    assert {"sha256", "engine", "inference_ms", "created_at"} <= set(table[0])


def export(admin_client, rows) -> list[dict]:
    response = admin_client.post(
        URL, {"action": "export_csv", "_selected_action": [r.pk for r in rows], "index": 0}
    )
    assert response.status_code == 200
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_csv_export_neutralises_a_formula_in_an_uploaded_filename(
    client, admin_client, ready_engine
):
    # The filename is the client's: as an attacker would send it, through the API.
    picture = upload(imagegen.jpeg(0), "=SUM(1+1)+HYPERLINK(0).jpg")
    assert client.post("/predict", {"image": picture}).status_code == 200
    [row] = export(admin_client, Prediction.objects.all())
    assert row["filename"] == "'=SUM(1+1)+HYPERLINK(0).jpg"  # text, not a formula
    assert Prediction.objects.get().filename == "=SUM(1+1)+HYPERLINK(0).jpg"  # stored as sent


def test_csv_export_neutralises_every_formula_start_and_nothing_else(admin_client, thumbnail):
    names = ["+1.jpg", "-2+3.jpg", "@cmd.jpg", "\tx.jpg", "\rx.jpg", "dog.jpg", "a=b.jpg"]
    rows = [make(thumbnail, filename=name)[0] for name in names]
    exported = {r["id"]: r for r in export(admin_client, rows)}
    cells = [exported[str(row.pk)]["filename"] for row in rows]
    assert cells[:5] == ["'" + name for name in names[:5]]
    assert cells[5:] == names[5:]
    assert all(float(r["top_probability"]) == 0.9 for r in exported.values())  # numbers stay


def test_predictions_cannot_be_added_or_changed(admin_client, thumbnail):
    row = make(thumbnail)[0]
    assert admin_client.get(f"{URL}add/").status_code == 403
    response = admin_client.post(f"{URL}{row.pk}/change/", {"top_label": "forged"})
    assert response.status_code == 403
    row.refresh_from_db()
    assert row.top_label == "beagle"


@pytest.fixture
def reload_urls(settings):
    def reload():
        import webapp.urls

        importlib.reload(webapp.urls)
        clear_url_caches()

    yield reload
    settings.ADMIN_ENABLED, settings.ADMIN_URL = True, "admin/"
    reload()


def test_admin_url_setting_moves_the_admin(admin_client, settings, reload_urls):
    settings.ADMIN_URL = "ops/history/"
    reload_urls()
    assert admin_client.get("/ops/history/classifier/prediction/").status_code == 200
    assert admin_client.get(URL).status_code == 404


def test_admin_can_be_switched_off(admin_client, settings, reload_urls):
    settings.ADMIN_ENABLED = False
    reload_urls()
    assert admin_client.get(URL).status_code == 404
    assert admin_client.get("/admin/").status_code == 404


def test_retention_deletes_only_what_is_old_enough(thumbnail):
    old = make(thumbnail, 3)
    recent = make(thumbnail, 2)
    Prediction.objects.filter(pk__in=[r.pk for r in old]).update(
        created_at=timezone.now() - timedelta(days=40)
    )
    Prediction.objects.filter(pk__in=[r.pk for r in recent]).update(
        created_at=timezone.now() - timedelta(days=5)
    )
    out = io.StringIO()
    call_command("prune_predictions", "--days", "30", "--dry-run", stdout=out)
    assert "Would delete 3 predictions" in out.getvalue()
    assert Prediction.objects.count() == 5
    out = io.StringIO()
    call_command("prune_predictions", "--days", "30", stdout=out)
    assert "Deleted 3 predictions" in out.getvalue()
    assert sorted(Prediction.objects.values_list("pk", flat=True)) == sorted(r.pk for r in recent)


def test_the_list_never_counts_the_whole_table_and_counts_a_filter_up_to_a_limit(
    admin_client, thumbnail, monkeypatch
):
    from classifier import history_admin

    make(thumbnail, 8, source="web")
    make(thumbnail, 4, source="api")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE classifier_prediction")
    monkeypatch.setattr(history_admin, "ESTIMATE_FROM", 0)
    monkeypatch.setattr(history_admin, "COUNT_LIMIT", 5)
    with CaptureQueriesContext(connection) as queries:
        everything = admin_client.get(URL).context["cl"]
    counts = [q["sql"] for q in queries if "COUNT(" in q["sql"].upper()]
    if connection.vendor == "postgresql":
        assert everything.result_count == history_admin.estimated_rows() == 12
        assert counts == [], "the unfiltered list is PostgreSQL's estimate"
    else:
        assert everything.result_count == 12
    web = admin_client.get(URL, {"source__exact": "web"}).context["cl"]
    assert web.result_count == 5, "counted up to COUNT_LIMIT"
    assert len(web.result_list) == 8, "the count is a floor: the page still lists them all"


def test_the_model_filter_lists_each_version_that_answered(admin_client, thumbnail):
    make(thumbnail, 2, model_name="shapes", model_version="1")
    make(thumbnail, 3, model_name="shapes", model_version="2")
    make(thumbnail, 1)  # ResNet50 1
    page = admin_client.get(URL)
    (spec,) = [f for f in page.context["cl"].filter_specs if f.title == "model"]
    assert [title for _, title in spec.lookup_choices] == ["ResNet50 1", "shapes 1", "shapes 2"]
    chosen = admin_client.get(URL, {"model": "shapes\t2"}).context["cl"]
    assert chosen.result_count == 3


def test_dates_filter_without_a_query_of_their_own(admin_client, thumbnail):
    make(thumbnail, 2)
    old = make(thumbnail, 3)
    Prediction.objects.filter(pk__in=[r.pk for r in old]).update(
        created_at=timezone.now() - timedelta(days=10)
    )
    body = admin_client.get(URL).content.decode()
    assert "Past 7 days" in body
    start = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    week = admin_client.get(URL, {"created_at__gte": (start - timedelta(days=7)).isoformat()})
    assert week.context["cl"].result_count == 2


@pytest.mark.skipif(connection.vendor != "postgresql", reason="trigram indexes: PostgreSQL")
def test_searches_use_the_trigram_indexes(thumbnail):
    make(thumbnail, 3, filename="holiday-2026.jpg")
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")  # a 3-row table: make the planner say
        cursor.execute(
            "EXPLAIN SELECT id FROM classifier_prediction WHERE UPPER(filename::text) "
            "LIKE UPPER(%s) OR UPPER(top_label::text) LIKE UPPER(%s)",
            ["%holiday%", "%holiday%"],
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("SET enable_seqscan = on")
    # Only the trigram indexes answer a LIKE '%...%' (on each day's partition, they carry
    # the partition's name).
    assert "Index Cond: (upper((filename)::text) ~~ '%HOLIDAY%'" in plan
    assert "Index Cond: (upper((top_label)::text) ~~ '%HOLIDAY%'" in plan


def test_the_list_shows_small_thumbnails_and_a_row_the_stored_one(admin_client):
    import base64
    import re

    from PIL import Image

    from classifier.history_fill import thumbnails

    (photo,) = thumbnails(1, seed=7)  # a photo's: ~6 kB
    row = make(photo, 3)[0]
    listing = admin_client.get(URL).content.decode()
    pictures = re.findall(r'data:image/jpeg;base64,([^"]+)"', listing)
    assert len(pictures) == 3
    for data in pictures:
        small = base64.b64decode(data)
        assert len(small) < len(photo) / 2
        with Image.open(io.BytesIO(small)) as image:
            assert max(image.size) <= 96
            assert image.size[1] >= 48, "sharp at the 48 px it is shown"
    detail = admin_client.get(f"{URL}{row.pk}/change/").content.decode()
    assert base64.b64encode(photo).decode() in detail


def test_export_of_a_whole_filtered_list_streams_every_row_in_constant_memory(
    admin_client, monkeypatch
):
    import tracemalloc

    from classifier import history_export

    call_command("fill_history", "900", "--days", "3", stdout=io.StringIO())
    monkeypatch.setattr(history_export, "CHUNK", 100)

    def export_all(**filters) -> tuple[list[int], int]:
        """The ids exported (pieces read and dropped, as a download does) and the peak
        of memory allocated meanwhile."""
        # "Select all N predictions" of the filtered list, then the action.
        data = {"action": "export_csv", "select_across": 1, "index": 0, "_selected_action": [1]}
        response = admin_client.post(URL + "?" + urlencode(filters), data)
        assert response.status_code == 200
        ids = []
        tracemalloc.start()
        for piece in response.streaming_content:  # whole rows each
            rows = list(csv.reader(io.StringIO(piece.decode())))
            ids += [int(row[0]) for row in rows if row[0] != "id"]
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return ids, peak

    web = set(Prediction.objects.filter(source="web").values_list("pk", flat=True))
    ids, _ = export_all(source__exact="web")
    assert ids == sorted(web, reverse=True), "each once, newest first"
    ids, small_peak = export_all()
    assert len(ids) == 900
    call_command("fill_history", "8100", "--append", stdout=io.StringIO())
    ids, large_peak = export_all()
    assert sorted(ids) == sorted(Prediction.objects.values_list("pk", flat=True))
    assert large_peak < small_peak * 1.5, "memory does not grow with the rows (9,000 vs 900)"


def test_export_gives_way_while_the_model_serves(thumbnail, monkeypatch):
    from classifier import history_export

    make(thumbnail, 6)
    monkeypatch.setattr(history_export, "CHUNK", 2)
    pauses = []
    monkeypatch.setattr(history_export.time, "sleep", pauses.append)
    passes = iter(range(100))
    busy = list(history_export.csv_chunks(Prediction.objects.all(), lambda: (next(passes), 0)))
    assert len(busy) == 4  # the header, then 3 pieces of 2 rows
    assert len(pauses) == 3, "a pause after each piece made while the model served"
    assert all(pause > 0 for pause in pauses)
    pauses.clear()
    idle = list(history_export.csv_chunks(Prediction.objects.all(), lambda: (7, 0)))
    assert idle == busy
    assert pauses == [], "idle: full speed"
    list(history_export.csv_chunks(Prediction.objects.all(), lambda: (7, 3)))
    assert len(pauses) == 3, "images waiting for the model count as serving"


def test_the_list_sorts_only_by_columns_an_index_gives_in_order(admin_client, thumbnail):
    make(thumbnail, 2, total_ms=10.0)
    make(thumbnail, 1, total_ms=90.0)
    page = admin_client.get(URL)
    sortable = {h["text"] for h in page.context["result_headers"] if h["sortable"]}
    assert {text.lower() for text in sortable} == {
        "top label",
        "probability",
        "created at",
        "latency",
    }
    slowest = admin_client.get(URL, {"o": "-8"}).context["cl"].result_list
    assert [row.total_ms for row in slowest] == [90.0, 10.0, 10.0]
