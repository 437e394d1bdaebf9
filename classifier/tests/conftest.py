import os
import tempfile

import pytest

# Any attempt to use a Keras cache from this machine would hide a download; point it at
# an empty directory for the whole run (sockets are disabled too, see pyproject.toml).
os.environ["KERAS_HOME"] = os.path.join(
    os.environ.get("PYTEST_TMPDIR", "/tmp"), f"classifier-tests-keras-{os.getpid()}"
)


@pytest.fixture(autouse=True)
def _plain_static_storage(settings):
    # The manifest storage needs `collectstatic`; templates only need URLs in tests.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


@pytest.fixture(scope="session")
def tf_engine():
    """The real Keras ResNet50 with seeded random weights, built once per test run."""
    from classifier.inference import TensorFlowEngine

    return TensorFlowEngine(weights="random")


@pytest.fixture
def ready_engine(tf_engine):
    """Install the real engine in the process's slot, as a server's start-up does."""
    from classifier import services

    services.engine_slot.set(tf_engine)
    yield tf_engine
    services.engine_slot.set(None)
    services.shutdown()  # a test may have made a batcher with its own settings


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    """SQLite test databases go to a file, so a gunicorn subprocess can share them."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        db.setdefault("TEST", {})["NAME"] = os.path.join(
            tempfile.gettempdir(), f"classifier_test_db_{os.getpid()}.sqlite3"
        )
