"""Learning from corrections, the whole loop in one process with the real ResNet50
(random base weights): a head trained on a generated data set is served; users send it
sunsets of a kind its data set lacked (night_sunset) and correct it on each; `train_head
--from-history` adds those rows by their stored features, scores the old and the new head
on the same held-out rows, writes a model only when asked, and the new head, served,
gets such sunsets right."""

import io
import json

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from classifier import feedback, runtime
from classifier.engines import build_engine
from classifier.models import Prediction

from . import imagegen
from .helpers import train_head, upload

NIGHTS = 25  # sunsets at night sent and corrected


@pytest.fixture(scope="module")
def old_model(tmp_path_factory):
    """The data set, and the head trained on it alone (version 1)."""
    root = tmp_path_factory.mktemp("data")
    imagegen.data_set(root, per_class=20)
    output = tmp_path_factory.mktemp("models") / "shapes"
    train_head(root, output, "1")
    return root, output


def serve(model, settings):
    settings.CLASSIFIER_MODEL = str(model)
    runtime.engine_slot.set(build_engine(engine="tensorflow", weights="random", model=str(model)))


def night_jpeg(index: int) -> bytes:
    return imagegen.encode(imagegen.night_sunset(index))


def classify(client, pictures: list[bytes]) -> list[dict]:
    results = []
    for start in range(0, len(pictures), 8):
        answer = client.post(
            "/predict", {"image": [upload(p) for p in pictures[start : start + 8]]}
        )
        assert answer.status_code == 200, answer.content[:300]
        results += answer.json()["results"]
    return results


def say(client, result: dict, **verdict) -> None:
    answer = client.post(
        f"/predictions/{result['prediction_id']}/feedback",
        json.dumps({"token": result["feedback_token"], **verdict}),
        content_type="application/json",
    )
    assert answer.status_code == 200, answer.content


def train(root, *args) -> str:
    out = io.StringIO()
    call_command(
        "train_head", str(root), "--from-history", "--engine", "tensorflow", "--precision",
        "fp32", *args, stdout=out,
    )  # fmt: skip
    return out.getvalue()


@pytest.mark.django_db
def test_corrections_make_a_better_head_that_is_written_only_when_asked(
    client, old_model, settings, tmp_path
):
    settings.CLASSIFIER_WEIGHTS = "random"
    root, old = old_model
    serve(old, settings)
    try:
        nights = classify(client, [night_jpeg(i) for i in range(NIGHTS)])
        said_before = [r["predictions"][0]["label"] for r in nights]
        assert said_before.count("sunsets") <= 3, "the old head does not know night sunsets"
        for result in nights:
            say(client, result, label="sunsets")
        days = classify(
            client, [imagegen.encode(imagegen.class_picture("leaves", 500 + i)) for i in range(3)]
        )
        for result in days:
            say(client, result, correct=True)
        say(client, days[0], label=None)  # the last word counts: none of these
    finally:
        runtime.engine_slot.set(None)
        runtime.shutdown()
    assert Prediction.objects.exclude(features=None).count() == NIGHTS + 3

    printed = train(root)  # no --output: a report, nothing written
    added = f"History: {NIGHTS + 2} rows added (2 confirmed, {NIGHTS} corrected)"
    assert f"{added}; left out: 1 none of these" in printed
    assert "old (shapes 1)" in printed
    assert "Nothing written" in printed
    assert list(tmp_path.iterdir()) == []
    capped = train(root, "--history-limit", "5")
    assert "History: 5 rows added" in capped
    assert "Only the newest 5 rows were taken (--history-limit)" in capped

    new = tmp_path / "shapes-2"
    printed = train(root, "--output", str(new), "--model-version", "2", "--name", "shapes")
    evaluation = json.loads((new / "evaluation.json").read_text())
    compared = evaluation["compared"]
    assert compared["old"] == "shapes 1"
    sunsets = compared["history_per_class"]["sunsets"]
    assert sunsets["rows"] >= 4, "held-out rows of the corrected class"
    assert sunsets["old"] <= 0.25
    assert sunsets["new"] >= sunsets["old"] + 0.5, compared
    assert compared["accuracy"]["new"]["data set"] >= 0.9, "and no worse on the data set"
    metadata = json.loads((new / "metadata.json").read_text())
    assert metadata["history"]["rows"] == NIGHTS + 2
    assert metadata["version"] == "2"

    # Served, the new head names night sunsets it never saw.
    serve(new, settings)
    try:
        fresh = classify(client, [night_jpeg(1000 + i) for i in range(8)])
    finally:
        runtime.engine_slot.set(None)
        runtime.shutdown()
    assert [r["predictions"][0]["label"] for r in fresh].count("sunsets") >= 6
    assert set(
        Prediction.objects.filter(pk__in=[r["prediction_id"] for r in fresh]).values_list(
            "model_version", flat=True
        )
    ) == {"2"}


@pytest.mark.django_db
def test_rows_are_chosen_by_date_version_class_and_base_weights(old_model, settings):
    def row(label: str, feedback_: str, **fields) -> Prediction:
        values = {
            "source": "api", "sha256": "0" * 64, "width": 1, "height": 1,
            "image_format": "JPEG", "thumbnail": b"", "top_k": [], "top_label": "stripes",
            "top_probability": 0.5, "inference_ms": 1, "total_ms": 1, "model_name": "shapes",
            "model_version": "1", "weights": "random", "engine": "tensorflow",
            "feedback": feedback_, "corrected_label": label,
            "features": np.full(2048, 0.5, np.float16).tobytes(),
        }  # fmt: skip
        values.update(fields)
        return Prediction.objects.create(**values)

    row("sunsets", "corrected")
    row("stripes", "confirmed", model_version="2")
    row("", "none")
    row("beagle", "corrected")
    row("sunsets", "corrected", features=None)
    row("sunsets", "corrected", weights="imagenet")
    row("rings", "")  # no feedback
    classes = sorted(imagegen.CLASSES)
    everything = feedback.labelled(classes, weights="random")
    assert (everything.corrected, everything.confirmed) == (1, 1)
    assert [classes[i] for i in everything.labels] == ["stripes", "sunsets"], "newest first"
    assert not everything.limited
    newest = feedback.labelled(classes, weights="random", limit=1)
    assert newest.ids == everything.ids[:1]
    assert newest.limited, "older rows left out"
    assert everything.features.shape == (2, 2048)
    assert everything.features.dtype == np.float32
    assert everything.skipped == {
        "none of these": 1, "not one of the classes": 1, "no stored features": 1,
        "features of other base weights": 1,
    }  # fmt: skip
    assert len(feedback.labelled(classes, weights="random", model_version="2").ids) == 1
    Prediction.objects.filter(model_version="2").update(created_at="2020-01-01T00:00:00Z")
    recent = feedback.labelled(
        classes,
        weights="random",
        since=Prediction.objects.earliest("created_at").created_at.replace(year=2021),
    )
    assert [classes[i] for i in recent.labels] == ["sunsets"]


def test_the_history_limit_is_a_number_of_rows(old_model):
    root, _ = old_model
    with pytest.raises(CommandError, match="--history-limit"):
        train(root, "--history-limit", "0")


def test_history_options_need_from_history_and_an_output_otherwise(old_model):
    root, _ = old_model
    with pytest.raises(CommandError, match="go with --from-history"):
        call_command("train_head", str(root), "--output", "x", "--since", "2026-01-01")
    with pytest.raises(CommandError, match="--output MODEL_DIR"):
        call_command("train_head", str(root))
