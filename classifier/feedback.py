"""Feedback on an answer from whoever got it: was the top class right, and if not, which
class it was (or none of the model's). Each recorded answer comes with a token that only
the server can make, bound to its prediction id: an HMAC of the id under the project's
secret key (no table of tokens to keep or leak; rotating DJANGO_SECRET_KEY voids them).
The token is in the answer's body and the feedback's body only: never in a URL, and so
never in a log line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.http import QueryDict
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac

from .errors import InvalidParameter, InvalidToken, NotFound
from .models import Prediction

_SALT = "classifier.feedback"


def token(prediction_id: int) -> str:
    """The feedback token of a recorded prediction."""
    return salted_hmac(_SALT, str(prediction_id), algorithm="sha256").hexdigest()[:32]


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
