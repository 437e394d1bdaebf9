from django.conf import settings
from django.contrib import admin
from django.urls import path

from classifier import converters, openapi, v1, v2, views  # noqa: F401 (converters: <model:>)

# TF Serving's (KServe v1's) model paths, with or without `/versions/<model_version>`.
V1_MODELS = (
    "v1/models/<model:model_name>",
    "v1/models/<model:model_name>/versions/<model:model_version>",
)
# The Open Inference Protocol's model paths, with or without `/versions/<model_version>`.
V2_MODELS = (
    "v2/models/<str:model_name>",
    "v2/models/<str:model_name>/versions/<str:model_version>",
)

urlpatterns = [
    path("", views.index, name="index"),
    path("predict", views.predict, name="predict"),
    path("feedback", views.page_feedback, name="page-feedback"),
    path(
        "predictions/<int:prediction_id>/feedback",
        views.prediction_feedback,
        name="prediction-feedback",
    ),
    path("model", views.model_metadata, name="model"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("openapi.json", openapi.openapi_json, name="openapi"),
    path("api/", openapi.api_docs, name="api-docs"),
    path("v2", v2.server_metadata, name="v2-server"),
    path("v2/health/live", v2.live, name="v2-live"),
    path("v2/health/ready", v2.ready, name="v2-ready"),
    # Before the model paths: "stats" is not a model's name.
    path("v2/models/stats", v2.statistics, name="v2-statistics"),
    path("v2/repository/index", v2.repository_index, name="v2-repository-index"),
    # Named as the metrics label requests (with or without a version: one name).
    *(path(model, v2.model_metadata, name="v2-model") for model in V2_MODELS),
    *(path(f"{model}/ready", v2.model_ready, name="v2-model-ready") for model in V2_MODELS),
    *(path(f"{model}/infer", v2.infer, name="v2-infer") for model in V2_MODELS),
    *(path(f"{model}/config", v2.model_config, name="v2-model-config") for model in V2_MODELS),
    *(
        path(f"{model}/stats", v2.model_statistics, name="v2-model-statistics")
        for model in V2_MODELS
    ),
]
urlpatterns += [
    path("v1/models", v1.models, name="v1-models"),
    *(path(model, v1.model_status, name="v1-model") for model in V1_MODELS),
    *(path(f"{model}/metadata", v1.model_metadata, name="v1-metadata") for model in V1_MODELS),
    *(path(f"{model}:predict", v1.predict, name="v1-predict") for model in V1_MODELS),
    *(path(f"{model}:classify", v1.classify, name="v1-classify") for model in V1_MODELS),
]
if settings.ADMIN_ENABLED:
    urlpatterns.append(path(settings.ADMIN_URL, admin.site.urls))

handler400 = "classifier.views.bad_request"
handler404 = "classifier.views.not_found"
handler500 = "classifier.views.server_error"
