"""The history partitioned by day on PostgreSQL: retention drops whole days and their disk
goes back, rows of a day without a partition are kept, an existing history is converted
in place, and retention's DDL never waits long for a lock."""

import io
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.db import OperationalError, connection, connections
from django.db.migrations.loader import MigrationLoader
from django.utils import timezone

from classifier import partitions
from classifier.models import Prediction

from .test_admin import make

pytestmark = [
    pytest.mark.skipif(connection.vendor != "postgresql", reason="partitions: PostgreSQL"),
    pytest.mark.django_db(transaction=True),
]
TABLE = partitions.TABLE


def sql(statement: str, params=()):
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else None


def where(row: Prediction) -> str:
    """The partition a row is stored in."""
    return sql(f"SELECT tableoid::regclass::text FROM {TABLE} WHERE id = %s", [row.pk])[0][0]  # noqa: S608


def exists(name: str) -> bool:
    return sql("SELECT to_regclass(%s) IS NOT NULL", [name])[0][0]


def prune(*args: str) -> str:
    out = io.StringIO()
    call_command("prune_predictions", *args, stdout=out)
    return out.getvalue()


def test_retention_drops_whole_days_and_their_disk_goes_back():
    call_command("fill_history", "700", "--days", "6", stdout=io.StringIO())
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=n) for n in range(6, -1, -1)]
    assert all(exists(partitions.day_name(day)) for day in days), "one partition a day"
    doomed = [partitions.day_name(day) for day in days[:3]]  # wholly older than 3 days
    doomed_bytes = sum(sql("SELECT pg_total_relation_size(%s)", [name])[0][0] for name in doomed)
    disk = sql("SELECT pg_database_size(current_database())")[0][0]
    recent = Prediction.objects.filter(created_at__gte=timezone.now() - timedelta(days=2.9))
    kept = set(recent.values_list("pk", flat=True))

    # A day detached by a run stopped before it dropped it goes with the next run.
    sql(f"CREATE TABLE {TABLE}_p20200101 (LIKE {TABLE})")
    out = prune("--days", "3")

    assert "by dropping 3 days" in out
    assert not any(exists(name) for name in [*doomed, f"{TABLE}_p20200101"])
    freed = disk - sql("SELECT pg_database_size(current_database())")[0][0]
    assert freed >= 0.9 * doomed_bytes > 0, "the dropped days' files are gone from the disk"
    left = Prediction.objects.all()
    assert kept <= set(left.values_list("pk", flat=True))
    assert not left.filter(created_at__lt=timezone.now() - timedelta(days=3)).exists()
    assert "Partitions ready up to" in out
    assert exists(partitions.day_name(today + timedelta(days=partitions.AHEAD)))
    (new,) = make(b"jpeg")
    assert where(new) == partitions.day_name(today), "the service keeps writing, into today"


def test_a_day_without_a_partition_is_kept_in_the_default_and_pruned_like_the_rest():
    old, future = make(b"jpeg", 2)
    far = datetime.now(UTC) + timedelta(days=40)
    Prediction.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=40))
    Prediction.objects.filter(pk=future.pk).update(created_at=far)
    assert where(old) == where(future) == partitions.DEFAULT

    ensured = partitions.ensure(far.date(), 1)
    assert ensured.created == []
    assert ensured.skipped == [far.date()], "a partition would have to take the default's row"
    out = prune("--days", "30")
    assert "Deleted 1 predictions older than" in out
    assert "1 predictions are in the default partition" in out
    assert list(Prediction.objects.values_list("pk", flat=True)) == [future.pk]


def test_retention_waits_briefly_for_a_lock_and_tries_again(monkeypatch):
    monkeypatch.setattr(partitions, "LOCK_TIMEOUT", "200ms")
    monkeypatch.setattr(partitions, "ATTEMPTS", 2)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    call_command("fill_history", "50", "--days", "3", stdout=io.StringIO())
    (oldest, *_) = partitions.expired(timezone.now() - timedelta(days=1))
    reader = connections.create_connection("default")
    try:
        reader.set_autocommit(False)
        with reader.cursor() as cursor:  # a long read of the history holds its lock
            cursor.execute(f"SELECT count(*) FROM {TABLE}")  # noqa: S608
        started = time.monotonic()
        with pytest.raises(OperationalError, match="lock timeout"):
            partitions.drop(oldest)
        assert time.monotonic() - started < 5, "two tries of 200 ms, not a wait for the reader"
        assert exists(oldest.name)
        reader.commit()
        assert partitions.drop(oldest) > 0
        assert not exists(oldest.name)
    finally:
        reader.close()


def plain_history() -> None:
    """The history table as it was before partitioning: migration 0012's."""
    state = MigrationLoader(connection).project_state(("classifier", "0012_latency_index"))
    sql(f"DROP TABLE {TABLE} CASCADE")
    with connection.schema_editor() as editor:
        editor.create_model(state.apps.get_model("classifier", "Prediction"))
    for field in ("filename", "top_label"):
        sql(
            f"CREATE INDEX prediction_{field}_trigram ON {TABLE} "
            f'USING gin ((UPPER("{field}"::text)) gin_trgm_ops)'
        )


@pytest.fixture
def unpartitioned():
    plain_history()
    yield
    plain_history()
    partitions.convert()  # as migration 0013 leaves an empty history


def test_an_existing_history_is_partitioned_in_place_and_its_ids_go_on(unpartitioned):
    call_command("fill_history", "300", "--days", "5", stdout=io.StringIO())
    sql(f"SELECT setval(pg_get_serial_sequence('{TABLE}', 'id'), 5000)")  # newest rows deleted
    files = (
        "SELECT pg_relation_filenode(%s::regclass), pg_relation_filenode(indexrelid) "
        "FROM pg_index WHERE indrelid = %s::regclass AND NOT indisprimary"
    )
    heap_file, *_ = sql(files, [TABLE, TABLE])[0]
    index_files = {index for _, index in sql(files, [TABLE, TABLE])}
    assert not partitions.active()
    # What a conversion stopped after its first steps leaves (the bound of another day).
    sql(f"CREATE UNIQUE INDEX {partitions.BEFORE}_pkey ON {TABLE} (id, created_at)")
    sql(
        f"ALTER TABLE {TABLE} ADD CONSTRAINT {partitions.BEFORE}_bound "
        "CHECK (created_at < '2020-01-01') NOT VALID"
    )

    partitions.convert()

    assert partitions.active()
    assert Prediction.objects.count() == 300
    before = sql(files, [partitions.BEFORE, partitions.BEFORE])
    assert before[0][0] == heap_file, "the rows were not copied"
    assert {index for _, index in before} >= index_files, "the indexes were adopted, not rebuilt"
    (new,) = make(b"jpeg")
    assert new.pk == 5001, "ids go on from the old sequence: a feedback token never repeats"
    assert where(new) == partitions.BEFORE, "up to the day after tomorrow, rows join the old ones"
    names = [p.name for p in partitions.partitions()]
    after_tomorrow = datetime.now(UTC).date() + timedelta(days=2)
    assert names[0] == partitions.BEFORE
    assert names[-1] == partitions.DEFAULT
    assert partitions.day_name(after_tomorrow) == names[1]
    assert "Deleted" in prune("--days", "2")
    assert not Prediction.objects.filter(created_at__lt=timezone.now() - timedelta(days=2)).exists()
    assert Prediction.objects.filter(pk=new.pk).exists()
