from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("classifier", "0002_prediction_precision"),
    ]

    operations = [
        migrations.AlterField(
            model_name="prediction",
            name="source",
            field=models.CharField(
                choices=[("api", "API"), ("web", "Web page"), ("v2", "Open Inference Protocol")],
                db_index=True,
                max_length=8,
            ),
        ),
    ]
