import logging
import os
import sys

from django.apps import AppConfig
from django.conf import settings

logger = logging.getLogger(__name__)

# gunicorn and uWSGI exit codes that make their master stop instead of respawning the
# worker forever (gunicorn.arbiter.Arbiter.APP_LOAD_ERROR); Django's autoreloader also
# stops on it (it restarts only on 3).
APP_LOAD_ERROR = 4


class ClassifierConfig(AppConfig):
    name = "classifier"
    verbose_name = "Image classifier"

    def ready(self) -> None:
        from axes.signals import user_locked_out
        from django.db.models.signals import post_migrate

        from . import checks  # noqa: F401 - registers the deployment checks
        from .images import configure_pillow
        from .logs import count_lockouts

        # Count and log every login refused for too many failures (settings: AXES_*).
        user_locked_out.connect(count_lockouts, dispatch_uid="classifier-lockouts")
        # Every `migrate` (each deploy) makes the history's partitions for the days ahead.
        post_migrate.connect(partitions_ahead, sender=self, dispatch_uid="classifier-partitions")

        # Every process, not only servers: any image Pillow opens here is held to our
        # pixel limit, strictly (a decompression bomb raises instead of warning).
        configure_pillow(settings.CLASSIFIER_MAX_PIXELS)

        # ready() runs for every management command and may run twice; only server
        # processes load TensorFlow, and runtime.start_engine() is idempotent.
        if not is_server_process():
            return
        if not settings.SECRET_KEY_FROM_ENV:
            logger.warning(
                "DJANGO_SECRET_KEY is not set: using a random key for this process only."
            )
        if settings.CLASSIFIER_METRICS_BIND:
            from . import metrics

            metrics.start_server(settings.CLASSIFIER_METRICS_BIND)
        if settings.CLASSIFIER_LOAD_ON_START:
            from . import runtime

            runtime.start_engine(on_failure=_exit_on_load_failure)


def partitions_ahead(using: str, **kwargs) -> None:
    from django.db import connections

    from . import partitions

    if partitions.active(connections[using]):
        partitions.ensure_ahead(using=connections[using])


def is_server_process(argv: list[str] | None = None) -> bool:
    argv = sys.argv if argv is None else argv
    program = argv[0] if argv else ""
    if "gunicorn" in program or "uwsgi" in sys.modules:
        return True
    if len(argv) > 1 and argv[1] == "runserver":
        # The autoreloader's parent only watches files; its child (RUN_MAIN) serves.
        return os.environ.get("RUN_MAIN") == "true" or "--noreload" in argv
    return False


def _exit_on_load_failure(message: str) -> None:
    # A server without its model can only answer 503: stop, with the reason already
    # logged on one line (no traceback), so the operator or Kubernetes sees it at once.
    logging.shutdown()
    os._exit(APP_LOAD_ERROR)
