"""`manage.py fill_history`: realistic rows for measuring the history at scale."""

import io

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from classifier import features, feedback
from classifier.models import Prediction

pytestmark = pytest.mark.django_db


def test_rows_look_like_the_service_wrote_them_over_the_days_asked():
    out = io.StringIO()
    call_command("fill_history", "600", "--days", "10", "--feedback-share", "0.2", stdout=out)
    assert "Wrote 600 rows over 10 days" in out.getvalue()
    rows = list(Prediction.objects.order_by("id"))
    assert len(rows) == 600
    times = [row.created_at for row in rows]
    assert times == sorted(times), "ids grow with time"
    assert timezone.now() - times[0] > timezone.timedelta(days=9)
    assert timezone.now() - times[-1] < timezone.timedelta(days=1)
    sizes = [len(bytes(row.thumbnail)) for row in rows]
    assert 4000 < np.mean(sizes) < 9000, "a photo's 160 px thumbnail"
    row = rows[0]
    assert bytes(row.thumbnail)[:2] == b"\xff\xd8"
    assert all(len(r.top_k) == 5 for r in rows)
    assert row.top_k[0]["label"] == row.top_label
    assert [s["probability"] for s in row.top_k] == sorted(
        (s["probability"] for s in row.top_k), reverse=True
    )
    assert len(row.activation_map) == 7
    assert features.decode(row.features).shape == (2048,)
    said = [r for r in rows if r.feedback]
    assert 60 < len(said) < 180
    assert {r.feedback for r in said} == set(Prediction.Feedback.values)
    assert all(feedback.in_words(r.feedback, r.corrected_label) for r in said)
    assert len({r.top_label for r in rows}) > 50
    assert {r.source for r in rows} >= {"api", "web"}


def test_it_refuses_a_history_that_has_rows_unless_appending():
    call_command("fill_history", "5", "--no-features", stdout=io.StringIO())
    assert Prediction.objects.filter(features=None).count() == 5
    with pytest.raises(CommandError, match="already has rows"):
        call_command("fill_history", "5", stdout=io.StringIO())
    call_command("fill_history", "5", "--append", stdout=io.StringIO())
    assert Prediction.objects.count() == 10
