"""`python manage.py fill_history N [--days D]`: N realistic history rows, for measuring
the admin, exports and retention at scale (classifier/history_fill.py says what a row
holds). Refuses a database that already has history unless `--append`: it is a tool for
a measuring database, not for production."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from classifier import history_fill, services
from classifier.engines.base import weights_name
from classifier.models import Prediction


class Command(BaseCommand):
    help = "Fill the history with N realistic rows over the last --days days (for measuring)."

    def add_arguments(self, parser):
        parser.add_argument("rows", type=int)
        parser.add_argument("--days", type=float, default=30, help="spread over (default 30)")
        parser.add_argument(
            "--feedback-share", type=float, default=0.02,
            help="share of rows with feedback (default 0.02)",
        )  # fmt: skip
        parser.add_argument("--no-features", action="store_true", help="rows without features")
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--append", action="store_true", help="add to an existing history")

    def handle(self, *args, rows: int, days: float, **options):
        if rows < 1 or days <= 0 or not 0 <= options["feedback_share"] <= 1:
            raise CommandError("N >= 1, --days > 0 and --feedback-share from 0 to 1.")
        if not options["append"] and Prediction.objects.exists():
            raise CommandError(
                "The history already has rows: fill a database of its own, or add --append."
            )
        labels = [(label.name, label.wnid) for label in services.labels()]
        model = {
            "model_name": "ResNet50 (ImageNet)" if not settings.CLASSIFIER_MODEL else "custom",
            "model_version": "1",
            "weights": weights_name(settings.CLASSIFIER_WEIGHTS),
            "engine": "openvino",
            "precision": "bf16",
        }
        plan = history_fill.Plan(
            rows=rows,
            days=days,
            feedback_share=options["feedback_share"],
            features=not options["no_features"],
            seed=options["seed"],
        )
        done = 0

        def progress(count: int) -> None:
            nonlocal done
            done += count
            if done % 100_000 < count or done == rows:
                self.stdout.write(f"  {done} rows")

        seconds = history_fill.fill(plan, labels, model, progress)
        self.stdout.write(
            f"Wrote {rows} rows over {days:g} days in {seconds:.1f} s "
            f"({rows / seconds:.0f} rows/s)."
        )
