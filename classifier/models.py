from django.db import models

# Client-sent file names are cut to this length when recorded.
FILENAME_MAX_LENGTH = 255


class Prediction(models.Model):
    """One classified image: what was asked, what the model answered, how long it took."""

    class Feedback(models.TextChoices):
        CONFIRMED = "confirmed", "Confirmed (the top class was right)"
        CORRECTED = "corrected", "Corrected (another of the model's classes)"
        NONE = "none", "None of the model's classes"

    class Source(models.TextChoices):
        API = "api", "API"
        WEB = "web", "Web page"
        V2 = "v2", "Open Inference Protocol"
        V1 = "v1", "TF Serving / KServe v1"

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    source = models.CharField(max_length=8, choices=Source.choices, db_index=True)
    filename = models.CharField(
        max_length=FILENAME_MAX_LENGTH, blank=True
    )  # as sent by the client: data only
    # Not indexed: nothing looks rows up by it, and its two indexes (btree and LIKE) were
    # 236 MB at a million rows.
    sha256 = models.CharField("SHA-256", max_length=64)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    image_format = models.CharField(max_length=8)
    # A small JPEG in the database: pods share no disk, and the admin must show it.
    thumbnail = models.BinaryField()
    top_k = models.JSONField(help_text="[{label, probability, wnid, index}, ...], best first")
    top_label = models.CharField(max_length=64, db_index=True)
    top_probability = models.FloatField(db_index=True)
    activation_map = models.JSONField(
        null=True,
        blank=True,
        help_text="Where the model looked for the top-1 class: 7 rows of 7 values in [0, 1]",
    )
    inference_ms = models.FloatField(help_text="Forward pass of the batch this image was in")
    # Indexed: the admin's list sorts by it (the slowest first).
    total_ms = models.FloatField(
        db_index=True, help_text="Decode + inference + top-k for the request"
    )
    model_name = models.CharField(
        max_length=64, help_text="ResNet50 (ImageNet), or your model's name"
    )
    model_version = models.CharField(max_length=64, default="1")
    weights = models.CharField(max_length=255)
    engine = models.CharField(max_length=16)
    precision = models.CharField(max_length=8, default="fp32")
    # What the user who got the answer said of it (classifier/feedback.py); empty: nothing.
    feedback = models.CharField(max_length=12, choices=Feedback.choices, blank=True, default="")
    corrected_label = models.CharField(
        max_length=64, blank=True, default="", help_text="The right class, when corrected"
    )
    feedback_at = models.DateTimeField(null=True, blank=True)
    # The image's pooled features from the pass that answered (classifier/features.py),
    # for training a head on the history; null with CLASSIFIER_STORE_FEATURES=false.
    features = models.BinaryField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The admin's model filter (a loose index scan) and lookups by name.
            models.Index(fields=["model_name", "model_version"], name="prediction_model"),
            # The few rows with feedback, for the "where it is wrong" report and training
            # from the history (classifier/mistakes.py, feedback.py) at any table size;
            # covering what the report reads, so that it never visits the table's rows.
            models.Index(
                fields=["feedback", "top_label"],
                name="prediction_feedback_cover",
                condition=~models.Q(feedback=""),
                include=["corrected_label", "model_name", "model_version", "created_at"],
            ),
        ]

    def __str__(self) -> str:
        return f"{self.top_label} ({self.top_probability:.1%}) {self.filename}".strip()
