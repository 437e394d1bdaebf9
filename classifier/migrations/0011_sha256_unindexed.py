"""No index on the SHA-256 column: nothing looks rows up by it (not the admin's search,
not the code), and on PostgreSQL its two indexes (btree and the LIKE one) were 236 MB at
a million rows. Dropped CONCURRENTLY there, so that a large table keeps taking writes."""

from django.db import migrations, models

TABLE = "classifier_prediction"


def _sha256_indexes(schema_editor) -> list[str]:
    with schema_editor.connection.cursor() as cursor:
        constraints = schema_editor.connection.introspection.get_constraints(cursor, TABLE)
    return [
        name
        for name, details in constraints.items()
        if details["index"] and details["columns"] == ["sha256"] and not details["unique"]
    ]


def forwards(apps, schema_editor):
    concurrently = "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""
    for name in _sha256_indexes(schema_editor):
        schema_editor.execute(f"DROP INDEX {concurrently}IF EXISTS {name}")


def backwards(apps, schema_editor):
    concurrently = "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""
    schema_editor.execute(
        f"CREATE INDEX {concurrently}IF NOT EXISTS prediction_sha256 ON {TABLE} (sha256)"
    )


class Migration(migrations.Migration):
    atomic = False  # DROP INDEX CONCURRENTLY runs outside a transaction

    dependencies = [
        ("classifier", "0010_history_at_scale"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="prediction",
                    name="sha256",
                    field=models.CharField(max_length=64, verbose_name="SHA-256"),
                ),
            ],
            database_operations=[migrations.RunPython(forwards, backwards)],
        ),
    ]
