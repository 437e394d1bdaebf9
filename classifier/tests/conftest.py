import contextlib
import os
import tempfile
from pathlib import Path
from urllib.parse import quote

import pytest

from loadtest.server import Server, ServerFailed

from .helpers import CHROMIUM, OpenAPIClient

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


@pytest.fixture
def client():
    """pytest-django's `client`, checking every answer to a path classifier/openapi.yaml
    describes against it: the API tests hold the description to the code unedited."""
    return OpenAPIClient()


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, driven by Playwright (tests using it skip without it)."""
    if not os.path.exists(CHROMIUM) and not os.environ.get("CI"):
        pytest.skip("Debian's chromium is not installed (CI installs it)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls of the tests
    # (and the database flush after them) are plain synchronous ones.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def tf_engine():
    """The real Keras ResNet50 with seeded random weights, built once per test run."""
    from classifier.engines.tensorflow import TensorFlowEngine

    return TensorFlowEngine(weights="random")


@pytest.fixture
def ready_engine(tf_engine):
    """Install the real engine in the process's slot, as a server's start-up does."""
    from classifier import runtime

    runtime.engine_slot.set(tf_engine)
    yield tf_engine
    runtime.engine_slot.set(None)
    runtime.shutdown()  # a test may have made a batcher with its own settings


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    """SQLite test databases go to a file, so a gunicorn subprocess can share them."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        db.setdefault("TEST", {})["NAME"] = os.path.join(
            tempfile.gettempdir(), f"classifier_test_db_{os.getpid()}.sqlite3"
        )


def database_url() -> str:
    """The test database as a DATABASE_URL, for a server subprocess to share it."""
    from django.db import connection

    db = connection.settings_dict  # the test database, once pytest-django made it
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    user = quote(db["USER"] or "")
    password = f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else ""
    host = quote(db["HOST"] or "localhost", safe="")
    port = f":{db['PORT']}" if db["PORT"] else ""
    return f"postgresql://{user}{password}@{host}{port}/{db['NAME']}"


@contextlib.contextmanager
def _launcher(folder: Path):
    """Start gunicorns on the test database (see `gunicorn`); stop them all on exit."""
    servers: list[Server] = []

    def start(*, ready: bool = True, verify: bool | str = True, **env: str) -> Server:
        server = Server(
            folder,
            {
                "DJANGO_SECRET_KEY": "test-only-secret-key-for-serving-tests",
                "DATABASE_URL": database_url(),
                "KERAS_HOME": str(folder / "keras"),
                **env,
            },
        )
        servers.append(server.start())
        if ready:
            try:
                server.wait_ready(verify=verify)
            except ServerFailed as exc:
                pytest.fail(str(exc))
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def gunicorn(tmp_path):
    """`gunicorn(**env)`: a real gunicorn (shipped config, random weights, the test
    database unless DATABASE_URL is in env), ready unless `ready=False`; stopped after the
    test. `verify` is for /readyz over TLS."""
    with _launcher(tmp_path) as start:
        yield start


@pytest.fixture(scope="module")
def module_gunicorn(tmp_path_factory):
    """`gunicorn` for module-scoped fixtures: its servers are stopped after the module."""
    with _launcher(tmp_path_factory.mktemp("gunicorn")) as start:
        yield start


# Fixtures that bring up something heavy: the real model, a gunicorn subprocess, Chromium,
# a head trained with the real model.
SLOW_FIXTURES = {
    "tf_engine", "ready_engine", "gunicorn", "module_gunicorn", "browser", "server", "trained",
    "own_model", "old_model",
}  # fmt: skip


def pytest_collection_modifyitems(config, items):
    """Mark `slow` every test that needs the model, a server, a browser or a subprocess
    (kubectl, manage.py, openssl): `pytest -m "not slow"` (make test-fast) runs the rest."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        source = getattr(item.module, "__file__", "")
        heavy_module = source.endswith(("test_manifests.py", "test_page_browser.py"))
        if fixtures & SLOW_FIXTURES or heavy_module or "subprocess" in _body(item):
            item.add_marker(pytest.mark.slow)


def _body(item) -> str:
    import inspect

    try:
        return inspect.getsource(item.function)
    except (OSError, TypeError):
        return ""
