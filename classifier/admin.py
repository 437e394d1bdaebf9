"""The prediction history for operators: read-only, fast at millions of rows."""

import base64
import io
from urllib.parse import urlencode

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from PIL import Image

from . import explain, feedback, history_admin, history_export, mistakes, runtime
from .images import THUMBNAIL_SIZE
from .models import Prediction

# Rows of the change list show a small version of the stored thumbnail.
LIST_THUMBNAIL_SIZE = 48
# ... made from the stored thumbnail as a JPEG of at most this box (1.5x the shown size:
# sharp on most screens), ~1.9 kB where the stored one is ~6 kB: a list page of 50 rows
# weighs ~150 kB, not ~475 kB, for ~0.4 ms of CPU a row.
LIST_THUMBNAIL_BOX = (96, 72)
LIST_THUMBNAIL_QUALITY = 70


@admin.register(Prediction)
class PredictionAdmin(admin.ModelAdmin):
    list_display = (
        "thumb", "top_label", "probability", "said", "source", "model_and_version", "created_at",
        "latency", "filename",
    )  # fmt: skip
    list_display_links = ("thumb", "top_label")
    # Only columns an index can give in order (any other sorts the whole table: ~0.6 s
    # at a million rows); the filters cover feedback, source and model.
    sortable_by = ("top_label", "probability", "created_at", "latency")
    # Filters that cost the same at any table size (history_admin.py): no DISTINCT over
    # the table, no date hierarchy. A label is found by search (trigram indexes).
    list_filter = (
        "feedback",
        "source",
        history_admin.ModelFilter,
        ("created_at", admin.DateFieldListFilter),
    )
    search_fields = ("top_label", "filename")
    ordering = ("-created_at",)
    list_per_page = 50
    paginator = history_admin.HistoryPaginator
    # No COUNT(*) of the whole table beside the filtered one.
    show_full_result_count = False
    actions = ["export_csv"]
    fieldsets = (
        (None, {"fields": ("large_thumb", "where_it_looked", "top_k_table")}),
        ("Image", {"fields": ("filename", "image_size", "image_format", "sha256", "source")}),
        ("Model", {"fields": ("model_name", "model_version", "weights", "engine", "precision")}),
        ("Feedback", {"fields": ("feedback", "corrected_label", "feedback_at")}),
        ("Timings", {"fields": ("created_at", "inference", "latency")}),
    )
    readonly_fields = (
        "large_thumb", "where_it_looked", "top_k_table", "filename", "image_size",
        "image_format", "sha256", "source", "model_name", "model_version", "weights", "engine",
        "precision", "feedback", "corrected_label", "feedback_at",
        "created_at", "inference", "latency",
    )  # fmt: skip

    def get_urls(self):
        report = self.admin_site.admin_view(self.where_wrong)
        return [
            path("where-wrong/", report, name="classifier_prediction_where_wrong"),
            *super().get_urls(),
        ]

    def where_wrong(self, request):
        """ "Where the model is wrong": what users said of its answers (mistakes.py)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        scope = _scope(request.GET)
        report = mistakes.report(scope)
        context = {
            **self.admin_site.each_context(request),
            "title": "Where the model is wrong",
            "opts": self.model._meta,
            "report": report,
            "chart": mistakes.chart(report.confusions),
            "periods": [
                (days, _scope_query(scope.model_name, scope.model_version, days))
                for days in mistakes.PERIODS
            ],
            "models": [
                (name, version, _scope_query(name, version, scope.days))
                for name, version in report.models
            ],
            "all_models": _scope_query("", "", scope.days),
        }
        return TemplateResponse(request, "admin/classifier/prediction/where_wrong.html", context)

    def get_queryset(self, request):
        # The stored features (4 kB a row) are for training, never shown here.
        return super().get_queryset(request).defer("features")

    # Read-only: predictions are records of what happened.
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="Image")
    def thumb(self, obj: Prediction) -> str:
        if not obj.thumbnail:
            return "-"
        return format_html(
            '<img src="data:image/jpeg;base64,{}" alt="{}" height="{}">',
            base64.b64encode(list_thumbnail(bytes(obj.thumbnail))).decode(),
            obj.top_label,
            min(LIST_THUMBNAIL_SIZE, obj.height),
        )

    @admin.display(description="Image")
    def large_thumb(self, obj: Prediction) -> str:
        return _img(obj, THUMBNAIL_SIZE)

    @admin.display(description="Where it looked")
    def where_it_looked(self, obj: Prediction) -> str:
        """The thumbnail with the top-1 class's activation map over it (explain.py):
        brighter is where the evidence for the class was strongest."""
        if not obj.thumbnail or not obj.activation_map:
            return "-"
        png = explain.overlay_png(bytes(obj.thumbnail), obj.activation_map)
        return format_html(
            '<img src="data:image/png;base64,{}" alt="Where the model looked for {}" height="{}">',
            base64.b64encode(png).decode(),
            obj.top_label,
            min(obj.height, THUMBNAIL_SIZE),
        )

    @admin.display(description="Probability", ordering="top_probability")
    def probability(self, obj: Prediction) -> str:
        return f"{obj.top_probability:.1%}"

    @admin.display(description="Feedback", ordering="feedback")
    def said(self, obj: Prediction) -> str:
        """What the user said: right, the right class, or none of the model's."""
        return feedback.in_words(obj.feedback, obj.corrected_label) or "-"

    @admin.display(description="Model", ordering="model_name")
    def model_and_version(self, obj: Prediction) -> str:
        return f"{obj.model_name} {obj.model_version}"

    @admin.display(description="Latency", ordering="total_ms")
    def latency(self, obj: Prediction) -> str:
        return f"{obj.total_ms:.1f} ms"

    @admin.display(description="Inference (its batch's forward pass)")
    def inference(self, obj: Prediction) -> str:
        return f"{obj.inference_ms:.1f} ms"

    @admin.display(description="Size")
    def image_size(self, obj: Prediction) -> str:
        return f"{obj.width} x {obj.height}"

    @admin.display(description="Top-k")
    def top_k_table(self, obj: Prediction) -> str:
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (rank, score["label"], score.get("wnid", ""), f"{score['probability']:.2%}")
                for rank, score in enumerate(obj.top_k, start=1)
            ),
        )
        return format_html(
            "<table><thead><tr><th>#</th><th>Label</th><th>WordNet id</th>"
            "<th>Probability</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    @admin.action(description="Export selected predictions as CSV", permissions=["view"])
    def export_csv(self, request, queryset):
        """Streamed (history_export.py): constant memory, whatever the selection, and
        paced while the model is serving."""
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response = StreamingHttpResponse(
            history_export.csv_chunks(queryset, runtime.model_activity),
            content_type="text/csv; charset=utf-8",
        )
        response["Content-Disposition"] = f'attachment; filename="predictions-{stamp}.csv"'
        return response


def _scope(query) -> mistakes.Scope:
    """The report's scope from its query string; anything unknown means "all"."""
    days = query.get("days", "")
    return mistakes.Scope(
        model_name=query.get("model_name", "")[:64],
        model_version=query.get("model_version", "")[:64],
        days=int(days) if days.isdigit() and int(days) in mistakes.PERIODS else None,
    )


def _scope_query(model_name: str, model_version: str, days: int | None) -> str:
    query = {}
    if model_name:
        query.update(model_name=model_name, model_version=model_version)
    if days:
        query["days"] = days
    return "?" + urlencode(query) if query else "?"


def list_thumbnail(thumbnail: bytes) -> bytes:
    """The stored thumbnail made small for the list (LIST_THUMBNAIL_BOX); the stored one
    itself if it cannot be read."""
    try:
        with Image.open(io.BytesIO(thumbnail)) as image:
            image.draft("RGB", LIST_THUMBNAIL_BOX)  # JPEG: decode at a reduced scale
            small = image.convert("RGB")
        small.thumbnail(LIST_THUMBNAIL_BOX, Image.Resampling.BILINEAR)
        out = io.BytesIO()
        small.save(out, "JPEG", quality=LIST_THUMBNAIL_QUALITY)
        return out.getvalue()
    except (OSError, ValueError):
        return thumbnail


def _img(obj: Prediction, size: int) -> str:
    if not obj.thumbnail:
        return "-"
    data = base64.b64encode(bytes(obj.thumbnail)).decode()
    # A height keeps the thumbnail's aspect ratio; never more than it was stored at.
    height = min(size, obj.height, THUMBNAIL_SIZE)
    return format_html(
        '<img src="data:image/jpeg;base64,{}" alt="{}" height="{}">', data, obj.top_label, height
    )
