"""`python manage.py prune_predictions --days 30`: delete history older than an age.

Safe as a Kubernetes CronJob: idempotent, deletes in small batches (short transactions,
no long locks while the service keeps writing), prints what it did, exits 0.
"""

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from classifier.models import Prediction

BATCH = 1000


class Command(BaseCommand):
    help = "Delete predictions older than --days days (in batches)."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=float, required=True, help="keep this many days")
        parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")

    def handle(self, *args, days: float, dry_run: bool, **options):
        if days <= 0:
            raise CommandError("--days must be more than 0")
        cutoff = timezone.now() - timedelta(days=days)
        old = Prediction.objects.filter(created_at__lt=cutoff)
        if dry_run:
            count = old.count()
            self.stdout.write(
                f"Would delete {count} predictions older than {cutoff:%Y-%m-%d %H:%M %Z}."
            )
            return
        deleted = 0
        while True:
            ids = list(old.values_list("pk", flat=True)[:BATCH])
            if not ids:
                break
            deleted += Prediction.objects.filter(pk__in=ids).delete()[0]
        self.stdout.write(f"Deleted {deleted} predictions older than {cutoff:%Y-%m-%d %H:%M %Z}.")
