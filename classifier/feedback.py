"""Feedback on an answer from whoever got it: was the top class right, and if not, which
class it was (or none of the model's). Each recorded answer comes with a token that only
the server can make, bound to its prediction id: an HMAC of the id under the project's
secret key (no table of tokens to keep or leak; rotating DJANGO_SECRET_KEY voids them).
The token is in the answer's body and the feedback's body only: never in a URL, and so
never in a log line.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.http import QueryDict
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac

from . import features
from .errors import InvalidParameter, InvalidToken, NotFound
from .models import Prediction

_SALT = "classifier.feedback"


def token(prediction_id: int) -> str:
    """The feedback token of a recorded prediction."""
    return salted_hmac(_SALT, str(prediction_id), algorithm="sha256").hexdigest()[:32]


def in_words(feedback: str, label: str) -> str:
    """What a user said of an answer, for people ("" if nothing)."""
    if feedback == Prediction.Feedback.CONFIRMED:
        return "right"
    if feedback == Prediction.Feedback.CORRECTED:
        return f"it is {label.replace('_', ' ')}"
    if feedback == Prediction.Feedback.NONE:
        return "none of these classes"
    return ""


@dataclass(frozen=True)
class Verdict:
    """What a user said: the top class was right, or it was `label` (None: none of the
    model's classes)."""

    correct: bool
    label: str | None = None


def parse(body: Any, labels: list[str]) -> tuple[str, Verdict]:
    """(token, verdict) from the feedback's JSON body; InvalidParameter naming what is
    wrong."""
    if not isinstance(body, dict) or not isinstance(body.get("token"), str):
        raise InvalidParameter(
            'Send {"token": "<the answer\'s feedback_token>", "correct": true}, or '
            '{"token": ..., "label": "<the right class>"} (null: none of the classes).'
        )
    if "correct" in body and "label" in body:
        raise InvalidParameter('Send either "correct": true or "label", not both.')
    if "correct" in body:
        if body["correct"] is not True:
            raise InvalidParameter(
                'The answer was wrong: say which class it was with "label" (null: none).'
            )
        return body["token"], Verdict(correct=True)
    if "label" not in body:
        raise InvalidParameter('Send "correct": true, or "label" (null: none of the classes).')
    label = body["label"]
    if label is not None:
        if not isinstance(label, str):
            raise InvalidParameter(f"The model has no class {type(label).__name__!r}.")
        label = resolve_label(label, labels)
    return body["token"], Verdict(correct=False, label=label)


def parse_form(data: QueryDict, labels: list[str]) -> tuple[int, str, Verdict]:
    """(prediction id, token, verdict) from the page's feedback form: `answer` is "yes",
    "none" or "label" (then `label` names the class)."""
    try:
        prediction_id = int(data.get("prediction_id", ""))
    except ValueError:
        raise InvalidParameter("The form names no prediction: reload the page.") from None
    answer, given = data.get("answer", ""), data.get("token", "")
    if answer == "yes":
        return prediction_id, given, Verdict(correct=True)
    if answer == "none":
        return prediction_id, given, Verdict(correct=False)
    if answer == "label":
        text = data.get("label", "").strip()
        if not text:
            raise InvalidParameter("Type the right class, or choose “None of these”.")
        return prediction_id, given, Verdict(correct=False, label=resolve_label(text, labels))
    raise InvalidParameter("Say yes, no with the right class, or none of these.")


def _key(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).casefold()


def resolve_label(text: str, labels: list[str]) -> str:
    """The class `text` names: exactly, or as people write it (the page's `golden
    retriever` for Keras's `golden_retriever`, any case); InvalidParameter if none."""
    if text in labels:
        return text
    wanted = _key(text)
    for label in labels:
        if _key(label) == wanted:
            return label
    raise InvalidParameter(f"The model has no class {text[:64]!r}.")


def record(prediction_id: int, given: str, verdict: Verdict) -> Prediction:
    """Record `verdict` on the prediction (the last word counts); NotFound for an
    unknown id, InvalidToken for a token that is not this prediction's."""
    row = Prediction.objects.filter(pk=prediction_id).only("pk", "top_label").first()
    if row is None:
        raise NotFound(f"No prediction {prediction_id}.")
    if not constant_time_compare(given, token(prediction_id)):
        raise InvalidToken(
            "This token is not the feedback token of that prediction: send the "
            "`feedback_token` that came with the answer."
        )
    if verdict.correct or verdict.label == row.top_label:
        feedback, label = Prediction.Feedback.CONFIRMED, row.top_label
    elif verdict.label is None:
        feedback, label = Prediction.Feedback.NONE, ""
    else:
        feedback, label = Prediction.Feedback.CORRECTED, verdict.label
    now = timezone.now()
    Prediction.objects.filter(pk=prediction_id).update(
        feedback=feedback, corrected_label=label, feedback_at=now
    )
    row.feedback, row.corrected_label, row.feedback_at = feedback, label, now
    return row


@dataclass
class Labelled:
    """History rows as training data: what users said each image was."""

    ids: list[int]
    features: np.ndarray  # (len(ids), 2048) float32: each row's stored features
    labels: np.ndarray  # (len(ids),) index into the classes asked for
    confirmed: int = 0
    corrected: int = 0
    # Rows with feedback left out, by reason: "none of these", not one of the classes,
    # no stored features, features of other base weights.
    skipped: dict[str, int] = field(default_factory=dict)
    # The limit was reached: older rows that would have qualified were not read.
    limited: bool = False


# Rows taken from the history at most, newest first: each costs ~16 kB while it is read
# and stacked (float16 as stored, then float32), so 50,000 rows stay under 1 GB.
LIMIT = 50_000


def labelled(
    classes: list[str],
    *,
    weights: str,
    since: datetime.datetime | None = None,
    model_version: str | None = None,
    limit: int = LIMIT,
) -> Labelled:
    """The confirmed and corrected rows whose class (the top class confirmed, or the one
    the user named) is one of `classes` and whose features come from base `weights`
    (as rows record them: imagenet, random, or the file's name); optionally created since
    `since`, or answered by one model version; the newest `limit` of them. Read through
    the partial index on rows with feedback, a chunk at a time, newest first."""
    rows = Prediction.objects.exclude(feedback="")
    if since is not None:
        rows = rows.filter(created_at__gte=since)
    if model_version is not None:
        rows = rows.filter(model_version=model_version)
    index = {name: i for i, name in enumerate(classes)}
    ids, vectors, labels = [], [], []
    skipped: dict[str, int] = {}
    counts = {Prediction.Feedback.CONFIRMED: 0, Prediction.Feedback.CORRECTED: 0}

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    fields = ("pk", "feedback", "corrected_label", "weights", "features")
    limited = False
    for pk, said, label, row_weights, stored in (
        rows.order_by("-pk").values_list(*fields).iterator(chunk_size=2000)
    ):
        if len(ids) >= limit:
            limited = True
            break
        if said == Prediction.Feedback.NONE:
            skip("none of these")
        elif label not in index:
            skip("not one of the classes")
        elif stored is None or len(stored) != features.COUNT * features.STORED.itemsize:
            skip("no stored features")
        elif row_weights != weights:
            skip("features of other base weights")
        else:
            ids.append(pk)
            vectors.append(np.frombuffer(bytes(stored), dtype=features.STORED))
            labels.append(index[label])
            counts[said] += 1
    return Labelled(
        ids=ids,
        features=(
            np.stack(vectors).astype(np.float32)
            if vectors
            else np.zeros((0, features.COUNT), np.float32)
        ),
        labels=np.array(labels, dtype=np.int64),
        confirmed=counts[Prediction.Feedback.CONFIRMED],
        corrected=counts[Prediction.Feedback.CORRECTED],
        skipped=skipped,
        limited=limited,
    )
