"""An index on total_ms: the admin's list sorts by latency (the slowest first) without
sorting the whole table. Built CONCURRENTLY on PostgreSQL, so that a large table keeps
taking writes."""

from django.db import migrations, models

TABLE = "classifier_prediction"


def forwards(apps, schema_editor):
    concurrently = "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""
    schema_editor.execute(
        f"CREATE INDEX {concurrently}IF NOT EXISTS prediction_total_ms ON {TABLE} (total_ms)"
    )


def backwards(apps, schema_editor):
    concurrently = "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""
    schema_editor.execute(f"DROP INDEX {concurrently}IF EXISTS prediction_total_ms")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY runs outside a transaction

    dependencies = [
        ("classifier", "0011_sha256_unindexed"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="prediction",
                    name="total_ms",
                    field=models.FloatField(
                        db_index=True, help_text="Decode + inference + top-k for the request"
                    ),
                ),
            ],
            database_operations=[migrations.RunPython(forwards, backwards)],
        ),
    ]
