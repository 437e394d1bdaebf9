from django.conf import settings
from django.contrib import admin
from django.urls import path

from classifier import views

urlpatterns = [
    path("", views.index, name="index"),
    path("predict", views.predict, name="predict"),
    path("model", views.model_metadata, name="model"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
]
if settings.ADMIN_ENABLED:
    urlpatterns.append(path(settings.ADMIN_URL, admin.site.urls))

handler400 = "classifier.views.bad_request"
handler404 = "classifier.views.not_found"
handler500 = "classifier.views.server_error"
