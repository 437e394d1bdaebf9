"""Where the model is wrong, from what its users said (classifier/feedback.py): reported
accuracy per predicted class and the most common confusions (predicted -> what it was).

Every figure comes from the rows with feedback only, through the partial index on them
(models.Prediction.Meta), in three queries whatever the size of the history; the report
never reads a row without feedback.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from urllib.parse import urlencode

from django.db.models import Count
from django.urls import reverse
from django.utils import timezone

from .models import Prediction

# The per-class table and the confusions show this many at most, worst first.
MAX_CLASSES = 50
MAX_CONFUSIONS = 20
# The chart shows the top of the confusions.
CHART_CONFUSIONS = 10
# Periods an operator can choose, in days (None: all the history).
PERIODS = (7, 30, 90, None)

WRONG = (Prediction.Feedback.CORRECTED, Prediction.Feedback.NONE)
NONE_OF_THESE = "none of these"


@dataclass(frozen=True)
class Scope:
    """Which rows: one model version (or all), since a day (or ever)."""

    model_name: str = ""
    model_version: str = ""
    days: int | None = None

    @property
    def since(self) -> datetime.datetime | None:
        """The start of the first day in the period (the site's time zone)."""
        if self.days is None:
            return None
        day = timezone.localdate() - datetime.timedelta(days=self.days - 1)
        return timezone.make_aware(datetime.datetime.combine(day, datetime.time.min))

    def rows(self):
        rows = Prediction.objects.exclude(feedback="")
        if self.model_name:
            rows = rows.filter(model_name=self.model_name, model_version=self.model_version)
        if self.since:
            rows = rows.filter(created_at__gte=self.since)
        return rows

    def changelist(self, **lookups: str) -> str:
        """The admin's list of the rows behind a figure: this scope and `lookups`. Exact
        lookups are spelled as the list's filters spell them (`field__exact`), so that
        its sidebar shows them chosen."""
        query = {}
        if self.model_name:
            query["model"] = f"{self.model_name}\t{self.model_version}"  # its filter
        if self.since:
            query["created_at__gte"] = self.since.isoformat()
        query.update(lookups)
        spelled = {
            key if "__" in key or key in ("model", "corrected_label") else f"{key}__exact": value
            for key, value in query.items()
        }
        return reverse("admin:classifier_prediction_changelist") + "?" + urlencode(spelled)


@dataclass(frozen=True)
class ClassAccuracy:
    label: str
    right: int
    corrected: int
    none: int
    links: dict[str, str]

    @property
    def reports(self) -> int:
        return self.right + self.corrected + self.none

    @property
    def wrong(self) -> int:
        return self.corrected + self.none

    @property
    def accuracy(self) -> float:
        return self.right / self.reports


@dataclass(frozen=True)
class Confusion:
    predicted: str
    actual: str  # NONE_OF_THESE: none of the model's classes
    count: int
    link: str


@dataclass(frozen=True)
class Bar:
    """One row of the confusions chart, in the SVG's units: its text, right-aligned at
    `text_x`, its bar from `bar_x`, its count after the bar."""

    confusion: Confusion
    y: int
    width: float
    text_x: int = 0
    bar_x: int = 0

    @property
    def text_y(self) -> int:
        return self.y + CHART_ROW - 8

    @property
    def bar_y(self) -> int:
        return self.y + (CHART_ROW - CHART_BAR) // 2

    @property
    def count_x(self) -> float:
        return self.bar_x + self.width + 6


@dataclass
class Report:
    scope: Scope
    reports: int = 0
    right: int = 0
    classes: list[ClassAccuracy] = field(default_factory=list)
    classes_total: int = 0  # classes with feedback, of which `classes` shows the worst
    confusions: list[Confusion] = field(default_factory=list)
    models: list[tuple[str, str]] = field(default_factory=list)  # with feedback

    @property
    def accuracy(self) -> float | None:
        return self.right / self.reports if self.reports else None

    @property
    def links(self) -> dict[str, str]:
        return {
            "reports": self.scope.changelist(feedback__in=",".join(Prediction.Feedback.values)),
            "right": self.scope.changelist(feedback=Prediction.Feedback.CONFIRMED),
        }


# The chart's geometry (SVG user units): a row per confusion.
CHART_WIDTH = 640
CHART_LABEL_WIDTH = 300
CHART_ROW = 24
CHART_BAR = 16


def chart(confusions: list[Confusion]) -> dict:
    """The bars of the confusions chart: the longest is the chart's bar area."""
    shown = confusions[:CHART_CONFUSIONS]
    most = max((c.count for c in shown), default=1)
    area = CHART_WIDTH - CHART_LABEL_WIDTH - 48  # room for the count after the bar
    bars = [
        Bar(
            confusion=c,
            y=i * CHART_ROW,
            width=round(max(1.0, area * c.count / most), 1),
            text_x=CHART_LABEL_WIDTH - 8,
            bar_x=CHART_LABEL_WIDTH,
        )
        for i, c in enumerate(shown)
    ]
    return {
        "bars": bars,
        "width": CHART_WIDTH,
        "height": max(1, len(bars)) * CHART_ROW,
        "bar_height": CHART_BAR,
    }


def report(scope: Scope) -> Report:
    rows = scope.rows()
    result = Report(scope=scope)
    counts: dict[str, dict[str, int]] = {}
    # COUNT(*), not of a column: the covering index answers alone (an index-only scan).
    for group in rows.values("top_label", "feedback").annotate(n=Count("*")).order_by():
        counts.setdefault(group["top_label"], {})[group["feedback"]] = group["n"]
    classes = [
        ClassAccuracy(
            label=label,
            right=said.get(Prediction.Feedback.CONFIRMED, 0),
            corrected=said.get(Prediction.Feedback.CORRECTED, 0),
            none=said.get(Prediction.Feedback.NONE, 0),
            links={
                "reports": scope.changelist(
                    top_label=label, feedback__in=",".join(Prediction.Feedback.values)
                ),
                "right": scope.changelist(top_label=label, feedback=Prediction.Feedback.CONFIRMED),
                "wrong": scope.changelist(top_label=label, feedback__in=",".join(WRONG)),
            },
        )
        for label, said in counts.items()
    ]
    classes.sort(key=lambda c: (-c.wrong, c.accuracy, c.label))
    result.classes = classes[:MAX_CLASSES]
    result.classes_total = len(classes)
    result.reports = sum(c.reports for c in classes)
    result.right = sum(c.right for c in classes)

    confusions = (
        rows.filter(feedback__in=WRONG)
        .values("top_label", "corrected_label", "feedback")
        .annotate(n=Count("*"))
        .order_by("-n", "top_label", "corrected_label")[:MAX_CONFUSIONS]
    )
    for group in confusions:
        predicted = group["top_label"]
        if group["feedback"] == Prediction.Feedback.NONE:
            actual = NONE_OF_THESE
            link = scope.changelist(top_label=predicted, feedback=Prediction.Feedback.NONE)
        else:
            actual = group["corrected_label"]
            link = scope.changelist(
                top_label=predicted,
                feedback=Prediction.Feedback.CORRECTED,
                corrected_label=actual,
            )
        result.confusions.append(Confusion(predicted, actual, group["n"], link))

    result.models = [
        (m["model_name"], m["model_version"])
        for m in Prediction.objects.exclude(feedback="")
        .values("model_name", "model_version")
        .distinct()
        .order_by("model_name", "model_version")
    ]
    return result
