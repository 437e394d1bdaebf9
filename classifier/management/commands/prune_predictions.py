"""`python manage.py prune_predictions --days 30`: delete history older than an age.

Safe as a Kubernetes CronJob: idempotent, prints what it did, exits 0. On PostgreSQL the
history is partitioned by day (classifier/partitions.py): each day older than the age is
dropped whole (its disk goes back at once), the rest of the old rows (part of a day, the
default partition, a pre-partitioning history) are deleted in small batches (short
transactions, no long locks while the service keeps writing), and partitions are made
for the days ahead. Elsewhere (SQLite) everything is deleted in batches.
"""

import time
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from classifier import partitions
from classifier.models import Prediction

BATCH = 1000


class Command(BaseCommand):
    help = "Delete predictions older than --days days (whole days dropped, the rest in batches)."

    def add_arguments(self, parser):
        parser.add_argument("--days", type=float, required=True, help="keep this many days")
        parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")

    def handle(self, *args, days: float, dry_run: bool, **options):
        if days <= 0:
            raise CommandError("--days must be more than 0")
        cutoff = timezone.now() - timedelta(days=days)
        when = f"{cutoff:%Y-%m-%d %H:%M %Z}"
        partitioned = partitions.active()
        whole = partitions.expired(cutoff) if partitioned else []
        old = Prediction.objects.filter(created_at__lt=cutoff)
        if dry_run:
            count = old.count()
            days_text = f" ({len(whole)} whole days)" if whole else ""
            self.stdout.write(f"Would delete {count} predictions{days_text} older than {when}.")
            return
        started = time.monotonic()
        dropped = sum(partitions.drop(partition) for partition in whole)
        for name in partitions.detached() if partitioned else []:
            partitions.drop_detached(name)
        deleted = 0
        while True:
            ids = list(old.values_list("pk", flat=True)[:BATCH])
            if not ids:
                break
            deleted += Prediction.objects.filter(pk__in=ids).delete()[0]
        how = f" ({dropped} by dropping {len(whole)} days)" if whole else ""
        took = time.monotonic() - started
        self.stdout.write(
            f"Deleted {dropped + deleted} predictions{how} older than {when} in {took:.2f} s."
        )
        if partitioned:
            self._ahead()

    def _ahead(self):
        ensured = partitions.ensure_ahead()
        newest = max((p.lower for p in partitions.partitions() if p.lower), default=None)
        if newest is not None:
            self.stdout.write(f"Partitions ready up to {newest:%Y-%m-%d} (UTC).")
        if ensured.skipped:
            days = ", ".join(f"{day:%Y-%m-%d}" for day in ensured.skipped)
            self.stdout.write(
                f"No partition made for {days}: the default partition holds rows of it."
            )
        waiting = partitions.default_rows()
        if waiting:
            self.stdout.write(
                f"{waiting} predictions are in the default partition (days that had no "
                "partition); they are kept and pruned like the others."
            )
