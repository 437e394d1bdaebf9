"""The upload page's result cards: one per image, from an answer just given or, once its
user has said whether it was right (the form without JavaScript), from its history rows.
Each card carries what its feedback form needs: the prediction's id and token, and what
was recorded."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.utils.crypto import constant_time_compare

from . import feedback
from .model import ClassScore
from .models import Prediction
from .services import ClassifyResult


@dataclass(frozen=True)
class Card:
    prediction_id: int | None  # None: not recorded, so no feedback
    filename: str
    thumbnail: bytes
    predictions: list[ClassScore]
    activation_map: list[list[float]] | None = None
    feedback: str = ""
    corrected_label: str = ""

    @property
    def token(self) -> str:
        return feedback.token(self.prediction_id) if self.prediction_id is not None else ""

    @property
    def shown(self) -> str:
        """The card's entry in the form's `shown` list: the page comes back with it."""
        return f"{self.prediction_id}.{self.token}"

    @property
    def recorded(self) -> str:
        """What its user said, in words ("" if nothing yet)."""
        said = feedback.in_words(self.feedback, self.corrected_label)
        return f"Recorded: {said}." if said else ""


def from_result(result: ClassifyResult, explain: bool) -> list[Card]:
    return [
        Card(
            prediction_id=item.prediction_id,
            filename=item.filename,
            thumbnail=item.image.thumbnail,
            predictions=item.predictions,
            activation_map=item.activation_map if explain else None,
        )
        for item in result.items
    ]


def from_shown(shown: Iterable[str], limit: int) -> list[Card]:
    """The cards of a form's `shown` entries ("id.token"), in their order: at most
    `limit`, and only those whose token is right (the others are dropped, unread)."""
    wanted: list[int] = []
    for entry in list(shown)[:limit]:
        pk, _, given = entry.partition(".")
        if pk.isdigit() and constant_time_compare(given, feedback.token(int(pk))):
            wanted.append(int(pk))
    rows = Prediction.objects.only(
        "filename", "thumbnail", "top_k", "activation_map", "feedback", "corrected_label"
    ).in_bulk(wanted)
    return [_from_row(rows[pk]) for pk in wanted if pk in rows]


def _from_row(row: Prediction) -> Card:
    return Card(
        prediction_id=row.pk,
        filename=row.filename,
        thumbnail=bytes(row.thumbnail),
        predictions=[
            ClassScore(
                label=s["label"],
                probability=s["probability"],
                wnid=s.get("wnid", ""),
                index=s["index"],
            )
            for s in row.top_k
        ],
        activation_map=row.activation_map,
        feedback=row.feedback,
        corrected_label=row.corrected_label,
    )
