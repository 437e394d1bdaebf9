from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("classifier", "0003_prediction_source_v2"),
    ]

    operations = [
        migrations.AddField(
            model_name="prediction",
            name="activation_map",
            field=models.JSONField(
                blank=True,
                help_text="Where the model looked for the top-1 class: 7 rows of 7 values in [0, 1]",
                null=True,
            ),
        ),
    ]
