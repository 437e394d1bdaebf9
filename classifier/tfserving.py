"""TensorFlow Serving's REST API, which KServe's v1 protocol follows, for our models: model
status and metadata, `:predict` (the model's output tensor) and `:classify` (labels and
scores).

A request carries images as TF Serving's convention for binary values, `{"b64": "..."}`
(an encoded image file, decoded and preprocessed exactly as /predict does), or as
tensors: for `resnet50` the model's input (`pixels`, (224, 224, 3) per image, caffe
mode), for `resnet50_rgb` RGB levels 0-255 (`rgb`). Both of TF Serving's layouts:
- row ("instances"): a list with one entry per image: `{"b64": ...}`, a tensor, or an
  object naming its input (`{"image": {"b64": ...}}`, `{"pixels": [...]}`); answered with
  `{"predictions": [...]}`, one row of probabilities (one per class) per image;
- columnar ("inputs"): the batch as one value (a list of images) or as an object naming
  the input; answered with `{"outputs": [...]}`.
`:classify` also takes TF Serving's `{"examples": [...], "context": {...}}` and answers
`{"results": [[[label, score], ...], ...]}`, the top CLASSIFIER_DEFAULT_TOP_K per image.
Errors are classifier.errors classes; the views answer them as TF Serving does,
`{"error": message}`.

https://github.com/tensorflow/serving/blob/master/tensorflow_serving/g3doc/api_rest.md
https://kserve.github.io/website/latest/modelserving/data_plane/v1_protocol/
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from django.http import HttpRequest

from . import oip, reading, services
from . import oip_tensors as tensors
from .errors import InvalidBase64, InvalidInput, InvalidRequest, InvalidTensor
from .oip_tensors import IMAGE_INPUT, PIXELS_SHAPE
from .services import ClassifyResult, Upload

# The one signature each model has, as a Keras model exported for TF Serving names it.
SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"


@dataclass(frozen=True)
class V1Request:
    model: str
    uploads: list[Upload] | None  # image files, or
    pixels: np.ndarray | None  # the model's input, (N, 224, 224, 3) float32
    columnar: bool  # sent as "inputs": answer "outputs"


def model_status(name: str, ready: bool, error: str | None) -> dict:
    """TF Serving's model status, with KServe v1's readiness in the same object."""
    state = "AVAILABLE" if ready else "LOADING"
    status = {"error_code": "OK", "error_message": ""}
    if error:
        state, status = "END", {"error_code": "UNAVAILABLE", "error_message": error}
    return {
        "name": name,
        "ready": ready,
        "model_version_status": [{"version": oip.MODEL_VERSION, "state": state, "status": status}],
    }


def model_metadata(name: str) -> dict:
    """TF Serving's model metadata: the serving signature's inputs and output."""
    inputs = {
        input_name: _tensor_info(input_name, datatype, shape)
        for input_name in oip.MODEL_INPUTS[name]
        for datatype, shape in [oip.INPUT_TENSORS[input_name]]
    }
    return {
        "model_spec": {"name": name, "signature_name": "", "version": oip.MODEL_VERSION},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    SIGNATURE: {
                        "inputs": inputs,
                        "outputs": {
                            oip.OUTPUT: _tensor_info(
                                oip.OUTPUT, "FP32", [-1, len(services.labels())]
                            )
                        },
                        "method_name": PREDICT_METHOD,
                    }
                }
            }
        },
    }


def _tensor_info(name: str, datatype: str, shape: list[int]) -> dict:
    return {
        "dtype": {"BYTES": "DT_STRING", "FP32": "DT_FLOAT"}[datatype],
        "tensor_shape": {"dim": [{"size": str(size), "name": ""} for size in shape]},
        "name": f"{name}:0",
    }


def parse(request: HttpRequest, model: str, *, classify: bool) -> V1Request:
    """A `:predict` or (`classify`) `:classify` request for `model` (a key of
    oip.MODEL_INPUTS), checked against the model and every limit of /predict."""
    body = reading.read_body(request)
    message = reading.load_json(
        body, max_values=oip.max_json_values(), hint=" (send images as b64 files)"
    )
    if not isinstance(message, dict):
        raise InvalidRequest("The request must be a JSON object.")
    signature = message.get("signature_name", SIGNATURE)
    if signature not in ("", SIGNATURE):
        raise InvalidRequest(
            f"Serving signature name: {signature!r} not found in signature def; the model "
            f"has {SIGNATURE!r}."
        )
    layouts = [key for key in ("instances", "inputs", "examples") if key in message]
    if len(layouts) != 1 or (layouts[0] == "examples" and not classify):
        expected = '"instances", "inputs" or "examples"' if classify else '"instances" or "inputs"'
        raise InvalidRequest(f"Send exactly one of {expected}.")
    layout = layouts[0]
    if layout == "examples":
        items = _examples(message["examples"], message.get("context"))
    elif layout == "instances":
        items = _rows(message["instances"])
    else:
        items = _columns(message["inputs"])
    return _request(model, items, columnar=layout == "inputs")


def _examples(examples: Any, context: Any) -> list[tuple[str | None, Any]]:
    """TF Serving's Classify examples: each an object of features, plus the shared
    `context` features."""
    if context is not None and not isinstance(context, dict):
        raise InvalidRequest("`context` must be an object of features.")
    if not isinstance(examples, list) or not all(isinstance(e, dict) for e in examples):
        raise InvalidRequest("`examples` must be a list of objects of features.")
    return _rows([{**(context or {}), **example} for example in examples])


def _rows(instances: Any) -> list[tuple[str | None, Any]]:
    """(input name or None, value) per image of a row-format request."""
    if not isinstance(instances, list):
        raise InvalidRequest("`instances` must be a list, one entry per image.")
    items = []
    for instance in instances:
        if isinstance(instance, dict) and "b64" not in instance:
            if len(instance) != 1:
                raise InvalidInput(
                    'Each instance names one input, e.g. {"image": {"b64": "..."}}; '
                    f"this one has {sorted(instance)[:5]}."
                )
            ((name, value),) = instance.items()
            items.append((name, value))
        else:
            items.append((None, instance))
    return items


def _columns(inputs: Any) -> list[tuple[str | None, Any]]:
    """(input name or None, value) per image of a columnar request."""
    name = None
    if isinstance(inputs, dict) and "b64" not in inputs:
        if len(inputs) != 1:
            raise InvalidInput(f"Send one input; the request has {sorted(inputs)[:5]}.")
        ((name, inputs),) = inputs.items()
    if isinstance(inputs, dict):  # one b64 value: a batch of one
        inputs = [inputs]
    if not isinstance(inputs, list):
        raise InvalidRequest("`inputs` must hold a list of images, one per batch item.")
    return [(name, value) for value in inputs]


def _request(model: str, items: list[tuple[str | None, Any]], *, columnar: bool) -> V1Request:
    known = oip.MODEL_INPUTS[model]
    if not items:
        raise InvalidRequest("The request has no images.")
    reading.check_count(len(items))
    names = set()
    for name, value in items:
        if name is None:  # by its form: a b64 file, else the model's tensor input
            name = IMAGE_INPUT if isinstance(value, dict) else known[-1]
        if name not in known:
            raise InvalidInput(
                f"Unknown input {name!r} for model {model!r}; it takes "
                f"{' or '.join(repr(k) for k in known)}."
            )
        names.add(name)
    if len(names) != 1:
        raise InvalidInput("Send one kind of input per request: image files or tensors.")
    (name,) = names
    values = [value for _, value in items]
    if name == IMAGE_INPUT:
        uploads = [_file(value, position) for position, value in enumerate(values, 1)]
        return V1Request(model, uploads, None, columnar)
    tensor = {"name": name, "datatype": "FP32", "shape": [len(values), *PIXELS_SHAPE]}
    if not all(isinstance(value, list) for value in values):
        raise InvalidTensor(
            f"Each {name!r} value is a {list(PIXELS_SHAPE)} list of numbers; image files go "
            'as {"b64": "..."}.'
        )
    convert = tensors.rgb if name == tensors.RGB_INPUT else tensors.pixels
    return V1Request(model, None, convert({**tensor, "data": values}, b""), columnar)


def _file(value: Any, position: int) -> Upload:
    if not (isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str)):
        raise InvalidBase64(
            f'Image {position}: an image file goes as {{"b64": "<base64>"}} (TF Serving\'s '
            "convention for binary values)."
        )
    return Upload(data=reading.decode_base64(value["b64"], position))


def predict_response(request: V1Request, result: ClassifyResult) -> dict:
    rows = [item.probabilities.astype(float).tolist() for item in result.items]
    return {"outputs": rows} if request.columnar else {"predictions": rows}


def classify_response(result: ClassifyResult) -> dict:
    return {
        "results": [
            [[score.label, score.probability] for score in item.predictions]
            for item in result.items
        ]
    }
