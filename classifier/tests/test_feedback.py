"""Feedback on an answer from whoever got it (classifier/feedback.py and its endpoint):
the token that comes with each recorded answer, the three things a user can say, the
refusals, keys and the history row. Through Django's test client (every answer checked
against the OpenAPI description) with the real model."""

import base64
import json

import pytest

from classifier import feedback
from classifier.models import Prediction

from . import imagegen
from .helpers import upload


def classify(client, *files: bytes) -> list[dict]:
    answer = client.post("/predict", {"image": [upload(f) for f in files]})
    assert answer.status_code == 200, answer.content[:300]
    return answer.json()["results"]


def say(client, prediction_id: int, body: dict, **headers):
    return client.post(
        f"/predictions/{prediction_id}/feedback",
        json.dumps(body),
        content_type="application/json",
        **headers,
    )


@pytest.mark.django_db
def test_the_user_who_got_the_answer_confirms_corrects_or_says_none(client, ready_engine):
    (result,) = classify(client, imagegen.jpeg(3))
    pk, token = result["prediction_id"], result["feedback_token"]
    top = result["predictions"][0]["label"]
    other = result["predictions"][1]["label"]

    confirmed = say(client, pk, {"token": token, "correct": True})
    assert confirmed.status_code == 200
    assert confirmed.json()["feedback"] == "confirmed"
    assert confirmed.json()["label"] == top
    row = Prediction.objects.get(pk=pk)
    assert (row.feedback, row.corrected_label) == ("confirmed", top)

    corrected = say(client, pk, {"token": token, "label": other})  # the last word counts
    assert (corrected.json()["feedback"], corrected.json()["label"]) == ("corrected", other)
    row.refresh_from_db()
    assert (row.feedback, row.corrected_label) == ("corrected", other)
    assert row.feedback_at is not None

    none = say(client, pk, {"token": token, "label": None})
    assert (none.json()["feedback"], none.json()["label"]) == ("none", None)
    again = say(client, pk, {"token": token, "label": None})
    assert again.json()["feedback"] == "none"
    row.refresh_from_db()
    assert (row.feedback, row.corrected_label) == ("none", "")
    # Naming the top class is confirming it.
    assert say(client, pk, {"token": token, "label": top}).json()["feedback"] == "confirmed"


@pytest.mark.django_db
def test_a_wrong_token_an_unknown_id_or_an_unknown_class_is_refused(client, ready_engine):
    first, second = classify(client, imagegen.jpeg(1), imagegen.jpeg(2))
    pk = first["prediction_id"]
    assert first["feedback_token"] != second["feedback_token"]
    cases = [
        (pk, {"token": second["feedback_token"], "correct": True}, 403, "invalid_token"),
        (pk, {"token": "", "correct": True}, 403, "invalid_token"),
        (10**9, {"token": feedback.token(10**9), "correct": True}, 404, "not_found"),
        (
            pk,
            {"token": first["feedback_token"], "label": "no_such_class"},
            400,
            "invalid_parameter",
        ),
        (pk, {"token": first["feedback_token"], "correct": False}, 400, "invalid_parameter"),
        (pk, {"token": first["feedback_token"]}, 400, "invalid_parameter"),
        (pk, {"correct": True}, 400, "invalid_parameter"),
    ]
    for prediction_id, body, status, code in cases:
        response = say(client, prediction_id, body)
        assert response.status_code == status, (body, response.content)
        assert response.json()["error"]["code"] == code
    assert Prediction.objects.get(pk=pk).feedback == ""  # nothing recorded by any of them
    get = client.get(f"/predictions/{pk}/feedback")
    assert get.status_code == 405


@pytest.mark.django_db
def test_with_api_keys_feedback_needs_a_key_like_classification(client, ready_engine, settings):
    (result,) = classify(client, imagegen.jpeg(4))
    settings.CLASSIFIER_API_KEYS = ["k1"]
    body = {"token": result["feedback_token"], "correct": True}
    assert say(client, result["prediction_id"], body).status_code == 401
    keyed = say(client, result["prediction_id"], body, HTTP_AUTHORIZATION="Bearer k1")
    assert keyed.status_code == 200


@pytest.mark.django_db
def test_v2_answers_carry_each_images_id_and_token(client, ready_engine):
    message = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [2],
                "data": [base64.b64encode(imagegen.jpeg(i)).decode() for i in (5, 6)],
            }
        ]
    }
    answer = client.post(
        "/v2/models/resnet50/infer", json.dumps(message), content_type="application/json"
    ).json()
    ids = answer["parameters"]["prediction_ids"]
    tokens = answer["parameters"]["feedback_tokens"]
    assert len(ids) == len(tokens) == 2
    assert say(client, ids[1], {"token": tokens[1], "label": None}).status_code == 200
    assert say(client, ids[0], {"token": tokens[1], "label": None}).status_code == 403


def test_tokens_are_bound_to_their_id_and_the_secret(settings):
    assert feedback.token(5) == feedback.token(5)
    assert feedback.token(5) != feedback.token(6)
    before = feedback.token(5)
    settings.SECRET_KEY = "another-secret-key-of-sufficient-length-0123456789"
    assert feedback.token(5) != before


@pytest.mark.django_db
def test_a_class_is_named_as_people_write_it(client, ready_engine):
    (result,) = classify(client, imagegen.jpeg(4))
    other = result["predictions"][1]["label"]
    written = other.replace("_", " ").upper()
    answer = say(
        client, result["prediction_id"], {"token": result["feedback_token"], "label": written}
    )
    assert answer.status_code == 200
    assert answer.json()["label"] == other  # the model's own name is recorded
    assert Prediction.objects.get().corrected_label == other
