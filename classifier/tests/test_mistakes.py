"""The admin's "Where the model is wrong" page: its counts against the rows, each count's
link to exactly those rows, its chart, its scope (period, model version) and its bounded
queries."""

import re
from datetime import timedelta
from html import unescape

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from classifier.images import decode_image
from classifier.models import Prediction

from . import imagegen
from .test_admin import URL, make

pytestmark = pytest.mark.django_db
REPORT = URL + "where-wrong/"


@pytest.fixture(scope="module")
def thumbnail():
    return decode_image(imagegen.jpeg(0), max_bytes=10**7, max_pixels=10**8).thumbnail


def said(thumbnail, count, top, feedback="", corrected="", **fields):
    return make(
        thumbnail,
        count,
        top_label=top,
        feedback=feedback,
        corrected_label=corrected if feedback == "corrected" else (top if feedback else ""),
        **fields,
    )


@pytest.fixture
def history(thumbnail):
    said(thumbnail, 6, "beagle", "confirmed")
    said(thumbnail, 3, "beagle", "corrected", "Walker_hound")
    said(thumbnail, 1, "beagle", "corrected", "basset")
    said(thumbnail, 2, "beagle", "none")
    said(thumbnail, 4, "tabby", "corrected", "tiger_cat")
    said(thumbnail, 1, "tabby", "confirmed")
    said(thumbnail, 5, "tabby")  # nobody said anything: not in the report
    said(thumbnail, 2, "sunsets", "corrected", "leaves", model_name="shapes", model_version="2")


def table(body: str, table_id: str) -> list[list[str]]:
    """The cells' text of a table's body, row by row."""
    block = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', body, re.S).group(1)
    return [
        [
            re.sub(r"<[^>]+>", "", cell).strip()
            for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        ]
        for row in re.findall(r"<tr>(.*?)</tr>", block, re.S)
    ]


def links(body: str, table_id: str) -> dict[str, str]:
    block = re.search(rf'<table id="{table_id}">(.*?)</table>', body, re.S).group(1)
    return {
        text: unescape(href) for href, text in re.findall(r'<a href="([^"]+)">(\d+)</a>', block)
    }


def listed(admin_client, link: str) -> set[int]:
    page = admin_client.get(link)
    assert page.status_code == 200, link
    assert "?e=1" not in page.get("Location", "")
    return {row.pk for row in page.context["cl"].result_list}


def test_counts_match_the_rows_and_each_links_to_exactly_them(admin_client, history):
    page = admin_client.get(REPORT)
    assert page.status_code == 200
    body = page.content.decode()
    # 6+3+1+2 beagle, 4+1 tabby, 2 sunsets: 19 reports, 7 right.
    summary = re.sub(r"<[^>]+>", "", re.search(r'id="summary">(.*?)</p>', body, re.S).group(1))
    assert " ".join(summary.split()) == (
        "Reported on: 19 answers; right: 7 (reported accuracy 36.8%)."
    )
    assert table(body, "confusions") == [
        ["tabby", "tiger_cat", "4"],
        ["beagle", "Walker_hound", "3"],
        ["beagle", "none of these", "2"],
        ["sunsets", "leaves", "2"],
        ["beagle", "basset", "1"],
    ]
    assert table(body, "classes") == [
        ["beagle", "12", "6", "6", "50.0%"],
        ["tabby", "5", "1", "4", "20.0%"],
        ["sunsets", "2", "0", "2", "0.0%"],
    ]
    rows = Prediction.objects
    tiger = set(
        rows.filter(top_label="tabby", corrected_label="tiger_cat").values_list("pk", flat=True)
    )
    none = set(rows.filter(top_label="beagle", feedback="none").values_list("pk", flat=True))
    confusion_links = re.findall(
        r'<td class="number"><a href="([^"]+)">',
        body.split('id="confusions"')[1].split("</table>")[0],
    )
    assert listed(admin_client, unescape(confusion_links[0])) == tiger
    # The list's sidebar shows the filters the link chose.
    chosen = admin_client.get(unescape(confusion_links[0])).content.decode()
    assert re.search(r'<li class="selected">\s*<a href="[^"]*"[^>]*>Corrected', chosen)
    assert listed(admin_client, unescape(confusion_links[2])) == none
    beagle_wrong = set(
        rows.filter(top_label="beagle", feedback__in=["corrected", "none"]).values_list(
            "pk", flat=True
        )
    )
    class_links = re.findall(
        r'<td class="number"><a href="([^"]+)">', body.split('id="classes"')[1].split("</table>")[0]
    )
    assert listed(admin_client, unescape(class_links[2])) == beagle_wrong  # beagle's "wrong"
    assert len(listed(admin_client, unescape(class_links[0]))) == 12


def test_the_chart_is_drawn_by_the_server_and_its_bars_follow_the_counts(admin_client, history):
    body = admin_client.get(REPORT).content.decode()
    chart = re.search(r'<svg class="chart".*?</svg>', body, re.S).group(0)
    widths = [float(w) for w in re.findall(r'<rect [^>]*width="([\d.]+)"', chart)]
    assert len(widths) == 5
    assert widths == sorted(widths, reverse=True)
    assert widths[0] / widths[-1] == pytest.approx(4, rel=0.01)  # 4 tiger_cat, 1 basset
    assert "tabby → tiger cat" in chart
    # Nothing from elsewhere: every script and style sheet is the site's own.
    assert all(
        src.startswith("/static/")
        for src in re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', body)
    )


def test_the_report_is_scoped_to_a_model_version_and_a_period(admin_client, history, thumbnail):
    body = admin_client.get(REPORT + "?model_name=shapes&model_version=2").content.decode()
    assert table(body, "classes") == [["sunsets", "2", "0", "2", "0.0%"]]
    old = said(thumbnail, 3, "robin", "corrected", "jay")
    Prediction.objects.filter(pk__in=[r.pk for r in old]).update(
        created_at=timezone.now() - timedelta(days=40)
    )
    everything = admin_client.get(REPORT).content.decode()
    recent = admin_client.get(REPORT + "?days=30").content.decode()
    assert ["robin", "jay", "3"] in table(everything, "confusions")
    assert ["robin", "jay", "3"] not in table(recent, "confusions")
    recent_links = links(recent, "confusions")
    assert "created_at__gte=" in recent_links["4"]
    assert len(listed(admin_client, recent_links["4"])) == 4


def test_without_feedback_the_page_says_so_and_staff_reach_it_from_the_list(
    admin_client, thumbnail
):
    said(thumbnail, 3, "beagle")
    assert "No feedback" in admin_client.get(REPORT).content.decode()
    assert REPORT in admin_client.get(URL).content.decode()


def test_only_staff_see_it(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("visitor", password="pw-12345678"))
    response = client.get(REPORT)
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_its_queries_do_not_grow_with_the_history(admin_client, thumbnail):
    said(thumbnail, 2, "beagle", "corrected", "basset")
    with CaptureQueriesContext(connection) as small:
        admin_client.get(REPORT)
    for i in range(30):
        said(thumbnail, 3, f"class_{i}", "corrected", f"other_{i}")
        said(thumbnail, 2, f"class_{i}", "confirmed")
        said(thumbnail, 10, f"class_{i}")
    with CaptureQueriesContext(connection) as large:
        admin_client.get(REPORT)
    assert len(large.captured_queries) == len(small.captured_queries)
