"""`python manage.py admin_timings`: how long each admin page of the history takes on
this database, and how many queries it runs: the list (first and 100th page), each
filter, searches (no match, a rare filename, a label), a row, "Where the model is wrong".
Each page is asked for `--repeat` times through Django's whole stack in this process
(middleware, session, admin, templates; no network), as a staff user of its own
(`admin-timings`, made if missing). For a measuring database (`fill_history`)."""

import statistics
import time
from urllib.parse import quote

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from classifier.models import Prediction

USER = "admin-timings"


def _sortable() -> list[tuple[str, str]]:
    """(column, its `o` value: descending) of every column the list can be sorted by."""
    from classifier.admin import PredictionAdmin

    return [
        (name, f"-{position}")
        for position, name in enumerate(PredictionAdmin.list_display, start=1)
        if name in PredictionAdmin.sortable_by
    ]


class Command(BaseCommand):
    help = "Time each admin page of the prediction history on this database."

    def add_arguments(self, parser):
        parser.add_argument("--repeat", type=int, default=3)

    def handle(self, *args, repeat: int, **options):
        if not settings.ADMIN_ENABLED:
            raise CommandError("The admin is switched off (DJANGO_ADMIN_ENABLED=false).")
        newest = (
            Prediction.objects.order_by("-pk")
            .only("pk", "filename", "top_label", "model_name", "model_version")
            .first()
        )
        if newest is None:
            raise CommandError("The history is empty: fill it first (manage.py fill_history).")
        user, _ = get_user_model().objects.get_or_create(
            username=USER, defaults={"is_staff": True, "is_superuser": True}
        )
        host = next((h for h in settings.ALLOWED_HOSTS if h not in ("*", "")), "localhost")
        client = Client(HTTP_HOST=host.lstrip("."))
        client.force_login(user)
        base = reverse("admin:classifier_prediction_changelist")
        middle = Prediction.objects.filter(pk__lte=newest.pk // 2).order_by("-pk").first()
        label = middle.top_label if middle else newest.top_label
        model = f"{newest.model_name}\t{newest.model_version}"
        today = quote(
            timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0).isoformat()
        )
        pages = [
            ("list, page 1", base),
            ("list, page 100", f"{base}?p=99"),
            ("filter: feedback corrected", f"{base}?feedback__exact=corrected"),
            ("filter: source web", f"{base}?source__exact=web"),
            ("filter: model", f"{base}?model={quote(model)}"),
            ("filter: today", f"{base}?created_at__gte={today}"),
            ("top label (report's link)", f"{base}?top_label__exact={quote(label)}"),
            ("search: no match", f"{base}?q=zzqxv"),
            ("search: a rare filename", f"{base}?q={quote(middle.filename if middle else '')}"),
            ("search: a label", f"{base}?q={quote(label)}"),
            *((f"sorted by {name}", f"{base}?o={column}") for name, column in _sortable()),
            ("a row", reverse("admin:classifier_prediction_change", args=[newest.pk])),
            ("where the model is wrong", reverse("admin:classifier_prediction_where_wrong")),
        ]
        self.stdout.write(f"{Prediction.objects.order_by().count()} rows, {connection.vendor}")
        self.stdout.write(
            f"{'page':<28} {'ms (median)':>11} {'min-max':>13} {'queries':>7} {'kB':>6}"
        )
        for name, url in pages:
            times, queries, size = [], 0, 0
            for _ in range(repeat):
                with CaptureQueriesContext(connection) as captured:
                    started = time.perf_counter()
                    response = client.get(url)
                    times.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    raise CommandError(f"{url}: {response.status_code}")
                queries, size = len(captured), len(response.content)
            self.stdout.write(
                f"{name:<28} {statistics.median(times):>11.0f} "
                f"{f'{min(times):.0f}-{max(times):.0f}':>13} {queries:>7} {size / 1024:>6.0f}"
            )
