import base64

from django.contrib import admin
from django.utils.html import format_html

from .models import Prediction


@admin.register(Prediction)
class PredictionAdmin(admin.ModelAdmin):
    """Read-only history: predictions are records, not something to edit."""

    list_display = (
        "created_at",
        "thumb",
        "top_label",
        "top_probability",
        "source",
        "filename",
        "total_ms",
    )
    list_filter = ("source",)
    search_fields = ("top_label", "filename", "sha256")
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    exclude = ("thumbnail",)
    readonly_fields = ("thumb",)

    @admin.display(description="Image")
    def thumb(self, obj: Prediction) -> str:
        data = base64.b64encode(bytes(obj.thumbnail)).decode()
        return format_html('<img src="data:image/jpeg;base64,{}" alt="" height="64">', data)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
