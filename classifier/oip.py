"""The Open Inference Protocol's (v2: KServe, Triton, MLServer) wire format for our one
model: its metadata, inference requests in (JSON tensors, or a JSON header followed by
raw tensor bytes: the binary tensor data extension) and responses out (probabilities,
or the classification extension's "<score>:<index>:<label>" strings).

The model `resnet50` takes one of two inputs: `image`, encoded image files (BYTES; decoded
and preprocessed exactly as /predict does), or `pixels`, tensors a client preprocessed
itself (FP32 (N, 224, 224, 3), `model.preprocess`'s caffe mode). The same model is served
as `resnet50_rgb` too, for clients such as Triton's image_client.py that want one input
holding the picture, resized by the client: `rgb`, FP32 (N, 224, 224, 3), RGB levels 0-255.
Every limit of /predict holds. Errors are classifier.errors classes: views answer them
with the protocol's `{"error": message}`, with Triton's texts where its clients look for
them.

https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/
https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_binary_data.md
https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_classification.md
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from . import feedback, reading, services
from . import oip_tensors as tensors
from .errors import (
    InvalidInput,
    InvalidOutput,
    InvalidParameter,
    InvalidRequest,
    UnknownModel,
    UnknownVersion,
)
from .explain import GRID
from .model import SERVED_NAME, SERVED_VERSION, Label
from .oip_tensors import IMAGE_INPUT, PIXELS_INPUT, PIXELS_SHAPE, RGB_INPUT
from .services import ClassifyResult, Upload

MODEL_NAME = SERVED_NAME
MODEL_VERSION = SERVED_VERSION
RGB_MODEL_NAME = f"{SERVED_NAME}_rgb"
# The models this server has, and the inputs each takes (a request sends one of them).
MODEL_INPUTS = {MODEL_NAME: (IMAGE_INPUT, PIXELS_INPUT), RGB_MODEL_NAME: (RGB_INPUT,)}
OUTPUT = "probabilities"
# Asked for by name or with the request parameter `explain`: each image's class activation
# map for its top-1 class, (N, 7, 7) in [0, 1] (classifier/explain.py).
EXPLANATION = "explanation"
EXTENSIONS = ("classification", "binary_tensor_data")
# The binary tensor data extension: the JSON header's length, in a request or response
# whose body is that header followed by the tensors' bytes.
HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class RequestedOutput:
    """An output the response carries: its name, whether as binary tensor data (else JSON
    `data`), and for the probabilities the classification extension's top k (0: none)."""

    name: str
    binary: bool = False
    classification: int = 0


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    model: str  # the model's name, a key of MODEL_INPUTS
    uploads: list[Upload] | None  # the `image` input, or
    pixels: np.ndarray | None  # the model's input, (N, 224, 224, 3) float32 (`pixels`, `rgb`)
    outputs: list[RequestedOutput]  # in the response's order


# Each input's datatype and shape (-1: any batch size).
INPUT_TENSORS = {
    # One encoded file per item: [N, 1], as Triton's tools want a batched input's item
    # shape (perf_analyzer cannot drive [N]); requests may say [N] too.
    IMAGE_INPUT: ("BYTES", [-1, 1]),
    PIXELS_INPUT: ("FP32", [-1, *PIXELS_SHAPE]),
    RGB_INPUT: ("FP32", [-1, *PIXELS_SHAPE]),
}


def model_metadata(name: str, platform: str) -> dict:
    return {
        "name": name,
        "versions": [MODEL_VERSION],
        "platform": platform,
        "inputs": [
            {"name": tensor, "datatype": datatype, "shape": shape}
            for tensor in MODEL_INPUTS[name]
            for datatype, shape in [INPUT_TENSORS[tensor]]
        ],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, len(services.labels())]}],
    }


def check_model(name: str, version: str | None) -> None:
    """UnknownModel or UnknownVersion (404) in Triton's words, which its clients test for."""
    if name not in MODEL_INPUTS:
        raise UnknownModel(
            f"Request for unknown model: {name!r} is not found; this server has "
            f"{', '.join(repr(m) for m in MODEL_INPUTS)}."
        )
    if version not in (None, "", MODEL_VERSION):
        raise UnknownVersion(
            f"Request for unknown model: {name!r} version {version} is not found; it has "
            f"version {MODEL_VERSION}."
        )


def parse_infer(request: HttpRequest, model: str = MODEL_NAME) -> InferRequest:
    """The inference request for `model` in `request`'s body, checked against the model
    and every limit (classifier.errors)."""
    body = reading.read_body(request)
    header, tensor_bytes = _split(body, request.headers.get(HEADER_LENGTH))
    message = reading.load_json(
        header, max_values=max_json_values(), hint=" (send larger tensors as binary data)"
    )
    if not isinstance(message, dict):
        raise InvalidRequest("The inference request must be a JSON object.")
    request_id = message.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequest("`id` must be a string.")
    parameters = tensors.parameters(message, "the request")
    inputs = message.get("inputs")
    known = MODEL_INPUTS[model]
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInput(_one_input(model))
    tensor = inputs[0]
    name = tensor.get("name")
    if name not in known:
        raise InvalidInput(f"Unknown input {name!r} for model {model!r}. {_one_input(model)}")
    uploads, pixels = None, None
    if name == IMAGE_INPUT:
        uploads = tensors.image_files(tensor, tensor_bytes)
    elif name == PIXELS_INPUT:
        pixels = tensors.pixels(tensor, tensor_bytes)
    else:
        pixels = tensors.rgb(tensor, tensor_bytes)
    binary_by_default = _flag(parameters, "binary_data_output", "the request")
    outputs = _outputs(message.get("outputs"), binary_by_default)
    explained = any(output.name == EXPLANATION for output in outputs)
    if _flag(parameters, "explain", "the request") and not explained:
        outputs.append(RequestedOutput(EXPLANATION, binary_by_default))
    return InferRequest(request_id, model, uploads, pixels, outputs)


def _one_input(model: str) -> str:
    if model == RGB_MODEL_NAME:
        return f"Send one input, {RGB_INPUT!r}: FP32 {[-1, *PIXELS_SHAPE]}, RGB levels 0-255."
    return (
        f"Send exactly one input: {IMAGE_INPUT!r} (BYTES, encoded image files) or "
        f"{PIXELS_INPUT!r} (FP32, preprocessed {list(PIXELS_SHAPE)} tensors)."
    )


def infer_response(
    request: InferRequest, result: ClassifyResult, labels: list[Label]
) -> HttpResponse:
    body: dict[str, Any] = {"model_name": request.model, "model_version": MODEL_VERSION}
    if request.id is not None:
        body["id"] = request.id
    # Whether the history recorded these answers, and the forward pass's size; each
    # recorded image's id and feedback token (POST /predictions/{id}/feedback).
    ids = [item.prediction_id for item in result.items]
    body["parameters"] = {"stored": result.stored, "batch_size": result.batch_size}
    if result.stored:
        body["parameters"]["prediction_ids"] = ids
        body["parameters"]["feedback_tokens"] = [feedback.token(pk) for pk in ids]
    body["outputs"], tensor_data = [], []
    for requested in request.outputs:
        output, data, raw = _output(requested, result, labels)
        if requested.binary:
            output["parameters"] = {"binary_data_size": len(raw)}
            tensor_data.append(raw)
        else:
            output["data"] = data
        body["outputs"].append(output)
    if not any(requested.binary for requested in request.outputs):
        return JsonResponse(body)
    header = json.dumps(body, separators=(",", ":")).encode()
    response = HttpResponse(
        b"".join([header, *tensor_data]), content_type="application/octet-stream"
    )
    response[HEADER_LENGTH] = str(len(header))
    return response


def _output(requested: RequestedOutput, result: ClassifyResult, labels: list[Label]):
    """(the output's header, its JSON data, its binary data)."""
    count, k = len(result.items), requested.classification
    if requested.name == EXPLANATION:
        # Where the model looked for each image's top-1 class (classifier/explain.py).
        maps = np.array([item.activation_map for item in result.items], dtype="<f4")
        header = {"name": EXPLANATION, "datatype": "FP32", "shape": [count, GRID, GRID]}
        return header, maps.reshape(-1).tolist(), maps.tobytes()
    probabilities = np.stack([item.probabilities for item in result.items]).astype("<f4")
    if not k:
        header = {"name": OUTPUT, "datatype": "FP32", "shape": list(probabilities.shape)}
        return header, probabilities.reshape(-1).tolist(), probabilities.tobytes()
    best = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    elements = [
        f"{probabilities[row, index]:f}:{index}:{labels[index].name}"
        for row in range(count)
        for index in best[row]
    ]
    header = {"name": OUTPUT, "datatype": "BYTES", "shape": [count, k]}
    return header, elements, tensors.pack_elements([e.encode() for e in elements])


def max_json_values() -> int:
    """The values of the largest `pixels` tensor a request may carry, nested as deep as its
    shape (a list per row of every image), plus room for the rest of the JSON."""
    height, width, channels = PIXELS_SHAPE
    per_image = height * width * channels + height * width + height + 1
    return settings.CLASSIFIER_MAX_IMAGES * per_image + 1000


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(the JSON header, the tensors' bytes after it) of a body; all header without
    `Inference-Header-Content-Length`."""
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 < length <= len(body):
        raise InvalidRequest(
            f"{HEADER_LENGTH} must be the JSON header's length, from 1 to the body's "
            f"{len(body)} bytes.",
        )
    return body[:length], body[length:]


def _outputs(outputs: Any, binary_by_default: bool) -> list[RequestedOutput]:
    """The requested outputs, in order; none: the probabilities."""
    if outputs is None:
        return [RequestedOutput(OUTPUT, binary_by_default)]
    if not isinstance(outputs, list) or not 1 <= len(outputs) <= 2:
        raise InvalidOutput(
            f"Request {OUTPUT!r} and/or {EXPLANATION!r}, or leave `outputs` out.",
        )
    requested: list[RequestedOutput] = []
    for output in outputs:
        name = output.get("name") if isinstance(output, dict) else None
        if name not in (OUTPUT, EXPLANATION) or name in [r.name for r in requested]:
            raise InvalidOutput(
                f"Unknown or repeated output {name!r}; the outputs are {OUTPUT!r} and "
                f"{EXPLANATION!r}.",
            )
        parameters = tensors.parameters(output, f"output {name!r}")
        k = parameters.get("classification", 0) if name == OUTPUT else 0
        classes = len(services.labels())
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= classes:
            raise InvalidParameter(
                f"`classification` must be a whole number from 1 to {classes}.",
            )
        binary = parameters.get("binary_data", binary_by_default)
        if not isinstance(binary, bool):
            raise InvalidParameter("`binary_data` must be true or false.")
        requested.append(RequestedOutput(name, binary, k))
    return requested


def _flag(parameters: dict, name: str, where: str) -> bool:
    value = parameters.get(name, False)
    if not isinstance(value, bool):
        raise InvalidParameter(f"`{name}` of {where} must be true or false.")
    return value
