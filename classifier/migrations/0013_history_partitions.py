"""The history becomes partitioned by day on PostgreSQL (see classifier/partitions.py):
retention then drops a day's partition and its disk goes back at once. Rows already
there stay, without a copy, in one partition of their own. Nothing changes on SQLite.

Non-atomic: the existing table's new unique index is built CONCURRENTLY and its bound
validated beside the writes; the swap itself is one short transaction."""

from django.db import migrations

from classifier import partitions


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        partitions.convert(schema_editor.connection)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("classifier", "0012_latency_index"),
    ]

    # Backwards leaves the partitioned table: to Django it has the same columns.
    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
