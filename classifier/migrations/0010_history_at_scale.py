"""The history at millions of rows (classifier/history_admin.py): an index on (model
name, version) for the admin's model filter, in place of the one on the name alone; the
partial index on rows with feedback made covering (what the admin's report reads); and
on PostgreSQL trigram indexes for the admin's searches (icontains on the label and the
filename: `UPPER(field) LIKE`). On PostgreSQL every index is built CONCURRENTLY, so
that the serving pods keep writing history rows while a large table is indexed."""

from django.db import migrations, models

TABLE = "classifier_prediction"
TRIGRAM_FIELDS = ("top_label", "filename")
FEEDBACK_INDEX = (
    "prediction_feedback_cover ON classifier_prediction (feedback, top_label) "
    "INCLUDE (corrected_label, model_name, model_version, created_at) WHERE NOT (feedback = '')"
)


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        for name in _name_indexes(schema_editor):
            schema_editor.execute(f"DROP INDEX IF EXISTS {name}")
        schema_editor.execute(f"CREATE INDEX prediction_model ON {TABLE} (model_name, model_version)")
        # SQLite has no INCLUDE: the same partial index under its new name.
        schema_editor.execute("DROP INDEX IF EXISTS prediction_feedback")
        schema_editor.execute(
            f"CREATE INDEX prediction_feedback_cover ON {TABLE} (feedback, top_label) "
            "WHERE NOT (feedback = '')"
        )
        return
    schema_editor.execute(
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS prediction_model "
        f"ON {TABLE} (model_name, model_version)"
    )
    for name in _name_indexes(schema_editor):
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    schema_editor.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {FEEDBACK_INDEX}")
    schema_editor.execute("DROP INDEX CONCURRENTLY IF EXISTS prediction_feedback")
    # pg_trgm is a trusted extension: the database's owner may create it.
    schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    for field in TRIGRAM_FIELDS:
        schema_editor.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS prediction_{field}_trigram "
            f'ON {TABLE} USING gin ((UPPER("{field}"::text)) gin_trgm_ops)'
        )
    # Statistics of the indexed expressions (a sample of rows: seconds at millions), else
    # the planner guesses how many rows a search matches and may walk the whole date
    # index for a rare word.
    schema_editor.execute(f"ANALYZE {TABLE}")


def backwards(apps, schema_editor):
    concurrently = "CONCURRENTLY " if schema_editor.connection.vendor == "postgresql" else ""
    for field in TRIGRAM_FIELDS:
        schema_editor.execute(f"DROP INDEX {concurrently}IF EXISTS prediction_{field}_trigram")
    schema_editor.execute(f"CREATE INDEX {concurrently}IF NOT EXISTS prediction_model_name ON {TABLE} (model_name)")
    schema_editor.execute(f"DROP INDEX {concurrently}IF EXISTS prediction_model")
    schema_editor.execute(
        f"CREATE INDEX {concurrently}IF NOT EXISTS prediction_feedback ON {TABLE} (feedback, top_label) "
        "WHERE NOT (feedback = '')"
    )
    schema_editor.execute(f"DROP INDEX {concurrently}IF EXISTS prediction_feedback_cover")


def _name_indexes(schema_editor) -> list[str]:
    """The indexes of model_name alone: Django's for its former db_index=True (hashed
    names; on PostgreSQL also a `_like` one for LIKE), or those `backwards` made."""
    with schema_editor.connection.cursor() as cursor:
        constraints = schema_editor.connection.introspection.get_constraints(cursor, TABLE)
    return [
        name
        for name, details in constraints.items()
        if details["index"] and details["columns"] == ["model_name"] and not details["unique"]
    ]


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY runs outside a transaction

    dependencies = [
        ("classifier", "0009_prediction_features"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="prediction",
                    name="model_name",
                    field=models.CharField(
                        help_text="ResNet50 (ImageNet), or your model's name", max_length=64
                    ),
                ),
                migrations.AddIndex(
                    model_name="prediction",
                    index=models.Index(
                        fields=["model_name", "model_version"], name="prediction_model"
                    ),
                ),
                migrations.RemoveIndex(model_name="prediction", name="prediction_feedback"),
                migrations.AddIndex(
                    model_name="prediction",
                    index=models.Index(
                        condition=models.Q(("feedback", ""), _negated=True),
                        fields=["feedback", "top_label"],
                        include=["corrected_label", "model_name", "model_version", "created_at"],
                        name="prediction_feedback_cover",
                    ),
                ),
            ],
            database_operations=[migrations.RunPython(forwards, backwards)],
        ),
    ]
