"""classifier.oip: the Open Inference Protocol's framing, without a model or a server. A
request's JSON header and binary tensors in (Triton's binary tensor data extension: the
header's length in `Inference-Header-Content-Length`, each BYTES element as a 4-byte
little-endian length and its bytes), a response's header and tensors out. Through HTTP
with the real model: test_v2.py."""

import json
import struct

import numpy as np
import pytest

from classifier import oip
from classifier.errors import (
    InvalidInput,
    InvalidOutput,
    InvalidParameter,
    InvalidRequest,
    InvalidShape,
    InvalidTensor,
)
from classifier.model import load_labels, preprocess
from classifier.services import Classification, ClassifyResult

from .helpers import model_info


def infer_request(rf, message: dict, tensor_bytes: bytes = b"", *, header_length=None):
    """A POST of `message` as the JSON header, then `tensor_bytes`, as Triton's client
    sends it (`header_length` overrides the header's true length)."""
    header = json.dumps(message).encode()
    headers = {}
    if tensor_bytes or header_length is not None:
        length = len(header) if header_length is None else header_length
        headers["HTTP_INFERENCE_HEADER_CONTENT_LENGTH"] = str(length)
    return rf.post(
        "/v2/models/resnet50/infer",
        data=header + tensor_bytes,
        content_type="application/octet-stream",
        **headers,
    )


def elements(*files: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(f)) + f for f in files)


def image_input(count: int, size: int | None = None) -> dict:
    tensor = {"name": "image", "datatype": "BYTES", "shape": [count]}
    if size is not None:
        tensor["parameters"] = {"binary_data_size": size}
    return tensor


def test_binary_image_elements_are_split_into_one_upload_each(rf):
    files = [b"\xff\xd8first", b"", b"\x89PNG third, longer"]
    data = elements(*files)

    parsed = oip.parse_infer(infer_request(rf, {"inputs": [image_input(3, len(data))]}, data))

    assert [upload.data for upload in parsed.uploads] == files
    assert parsed.pixels is None
    assert parsed.outputs == [oip.RequestedOutput("probabilities", binary=False)]


@pytest.mark.parametrize(
    "data",
    [
        elements(b"abc", b"de")[:-1],  # the last element cut short
        elements(b"abc", b"de") + b"\x00\x00",  # bytes left over after the elements
        elements(b"abc"),  # one element where the shape says two
        elements(b"abc", b"de", b"f"),  # three
    ],
)
def test_binary_image_elements_must_frame_exactly_the_declared_count(rf, data):
    message = {"inputs": [image_input(2, len(data))]}
    with pytest.raises(InvalidTensor, match="2 elements"):
        oip.parse_infer(infer_request(rf, message, data))


@pytest.mark.parametrize("header_length", ["0", "-1", "12.5", "lots", "100000"])
def test_the_header_length_must_lie_within_the_body(rf, header_length):
    data = elements(b"abc")
    message = {"inputs": [image_input(1, len(data))]}
    with pytest.raises(InvalidRequest, match="Inference-Header-Content-Length"):
        oip.parse_infer(infer_request(rf, message, data, header_length=header_length))


def test_binary_data_size_must_count_the_bytes_after_the_header(rf):
    data = elements(b"abc")
    with pytest.raises(InvalidRequest, match="binary_data_size"):
        oip.parse_infer(infer_request(rf, {"inputs": [image_input(1, len(data) + 1)]}, data))
    with pytest.raises(InvalidRequest, match="no input says"):
        oip.parse_infer(infer_request(rf, {"inputs": [image_input(1)]}, data))
    both = {**image_input(1, len(data)), "data": ["YWJj"]}
    with pytest.raises(InvalidRequest, match="not both"):
        oip.parse_infer(infer_request(rf, {"inputs": [both]}, data))


def test_pixels_arrive_the_same_as_binary_flat_json_and_nested_json(rf):
    pixels = np.random.default_rng(0).uniform(-100, 100, (2, 224, 224, 3)).astype("<f4")
    tensor = {"name": "pixels", "datatype": "FP32", "shape": [2, 224, 224, 3]}
    as_binary = {**tensor, "parameters": {"binary_data_size": pixels.nbytes}}

    binary = oip.parse_infer(infer_request(rf, {"inputs": [as_binary]}, pixels.tobytes()))
    flat = oip.parse_infer(
        infer_request(rf, {"inputs": [{**tensor, "data": pixels.reshape(-1).tolist()}]})
    )
    nested = oip.parse_infer(infer_request(rf, {"inputs": [{**tensor, "data": pixels.tolist()}]}))

    for parsed in (binary, flat, nested):
        assert parsed.uploads is None
        assert parsed.pixels.dtype == np.float32
        np.testing.assert_array_equal(parsed.pixels, pixels)


def test_binary_pixels_of_the_wrong_length_are_refused_with_the_length_expected(rf):
    tensor = {"name": "pixels", "datatype": "FP32", "shape": [1, 224, 224, 3]}
    short = np.zeros(224 * 224 * 3 - 1, "<f4").tobytes()
    message = {"inputs": [{**tensor, "parameters": {"binary_data_size": len(short)}}]}
    with pytest.raises(InvalidTensor, match=str(224 * 224 * 3 * 4)):
        oip.parse_infer(infer_request(rf, message, short))


@pytest.mark.parametrize(
    "shape", [[0], [-1], [1, 2], [1, 1, 1], [0, 1], ["1"], [True], [True, 1], "1", None]
)
def test_a_shape_that_is_not_a_batch_of_n_is_refused(rf, shape):
    message = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": shape, "data": []}]}
    with pytest.raises(InvalidShape):
        oip.parse_infer(infer_request(rf, message))


def test_image_files_may_come_as_n_by_1_as_tritons_model_configuration_spells_them(rf):
    files = [b"\xff\xd8one", b"\xff\xd8two"]
    tensor = {"name": "image", "datatype": "BYTES", "shape": [2, 1]}
    data = elements(*files)
    message = {"inputs": [{**tensor, "parameters": {"binary_data_size": len(data)}}]}

    parsed = oip.parse_infer(infer_request(rf, message, data))

    assert [upload.data for upload in parsed.uploads] == files


def test_each_model_takes_only_its_own_inputs(rf):
    rgb = {"name": "rgb", "datatype": "FP32", "shape": [1, 224, 224, 3]}
    image = {"name": "image", "datatype": "BYTES", "shape": [1], "data": ["YWJj"]}
    with pytest.raises(InvalidInput, match="'rgb'"):
        oip.parse_infer(infer_request(rf, {"inputs": [rgb]}), "resnet50")
    with pytest.raises(InvalidInput, match="'rgb'"):
        oip.parse_infer(infer_request(rf, {"inputs": [image]}), "resnet50_rgb")


def test_rgb_levels_become_the_models_input_and_scaled_pictures_are_refused(rf):
    levels = np.random.default_rng(3).integers(0, 256, (1, 224, 224, 3)).astype("<f4")
    tensor = {"name": "rgb", "datatype": "FP32", "shape": [1, 224, 224, 3]}
    message = {"inputs": [{**tensor, "parameters": {"binary_data_size": levels.nbytes}}]}

    parsed = oip.parse_infer(infer_request(rf, message, levels.tobytes()), "resnet50_rgb")

    np.testing.assert_allclose(parsed.pixels, preprocess(levels))
    # image_client.py's -s INCEPTION (levels / 127.5 - 1) and -s VGG (minus the means).
    for scaled in (levels / 127.5 - 1, levels - np.array([123, 117, 104], "<f4")):
        scaled = scaled.astype("<f4")
        message = {"inputs": [{**tensor, "parameters": {"binary_data_size": scaled.nbytes}}]}
        with pytest.raises(InvalidTensor, match="from 0 to 255"):
            oip.parse_infer(infer_request(rf, message, scaled.tobytes()), "resnet50_rgb")


def test_outputs_keep_the_requested_order_and_each_its_own_framing(rf):
    message = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["YWJj"]}],
        "outputs": [
            {"name": "explanation"},
            {"name": "probabilities", "parameters": {"classification": 3, "binary_data": True}},
        ],
    }

    parsed = oip.parse_infer(infer_request(rf, message))

    assert parsed.outputs == [
        oip.RequestedOutput("explanation", binary=False),
        oip.RequestedOutput("probabilities", binary=True, classification=3),
    ]


def test_binary_data_output_is_the_default_and_explain_adds_the_maps_once(rf):
    inputs = [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["YWJj"]}]
    message = {"inputs": inputs, "parameters": {"binary_data_output": True, "explain": True}}

    assert oip.parse_infer(infer_request(rf, message)).outputs == [
        oip.RequestedOutput("probabilities", binary=True),
        oip.RequestedOutput("explanation", binary=True),
    ]
    asked = {**message, "outputs": [{"name": "explanation", "parameters": {"binary_data": False}}]}
    assert oip.parse_infer(infer_request(rf, asked)).outputs == [
        oip.RequestedOutput("explanation", binary=False)
    ]


@pytest.mark.parametrize(
    ("outputs", "error"),
    [
        ([{"name": "probabilities"}, {"name": "probabilities"}], InvalidOutput),
        ([{"name": "logits"}], InvalidOutput),
        ([], InvalidOutput),
        ([{"name": "probabilities", "parameters": {"classification": 1001}}], InvalidParameter),
        ([{"name": "probabilities", "parameters": {"classification": True}}], InvalidParameter),
        ([{"name": "probabilities", "parameters": {"binary_data": "yes"}}], InvalidParameter),
        ([{"name": "probabilities", "parameters": []}], InvalidParameter),
    ],
)
def test_bad_output_requests_are_refused(rf, outputs, error):
    inputs = [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["YWJj"]}]
    with pytest.raises(error):
        oip.parse_infer(infer_request(rf, {"inputs": inputs, "outputs": outputs}))


def _result(probabilities: np.ndarray) -> ClassifyResult:
    """What services.classify returns, for the rows of `probabilities` (no model)."""
    info = model_info("test")
    grid = [[0.5] * 7 for _ in range(7)]
    items = [Classification("", None, [], None, row, grid) for row in probabilities]
    return ClassifyResult(items, info, batch_size=len(items), timings={"total": 1.0})


def test_binary_outputs_follow_the_header_in_the_requested_order():
    probabilities = np.random.default_rng(1).dirichlet(np.ones(1000), 2).astype(np.float32)
    request = oip.InferRequest(
        id="r1",
        model="resnet50",
        uploads=None,
        pixels=None,
        outputs=[
            oip.RequestedOutput("probabilities", binary=True, classification=2),
            oip.RequestedOutput("explanation", binary=False),
            oip.RequestedOutput("probabilities", binary=True),
        ],
    )

    response = oip.infer_response(request, _result(probabilities), load_labels())

    assert response["Content-Type"] == "application/octet-stream"
    length = int(response[oip.HEADER_LENGTH])
    header = json.loads(response.content[:length])
    tensors = response.content[length:]
    assert header["id"] == "r1"
    top2, maps, full = header["outputs"]
    assert top2["shape"] == [2, 2]
    assert top2["datatype"] == "BYTES"
    assert maps["shape"] == [2, 7, 7]
    assert maps["data"] == [0.5] * 98  # asked for as JSON: in the header
    assert full["shape"] == [2, 1000]
    sizes = [top2["parameters"]["binary_data_size"], full["parameters"]["binary_data_size"]]
    assert sum(sizes) == len(tensors)
    classes, offset = [], 0
    while offset < sizes[0]:
        (size,) = struct.unpack_from("<I", tensors, offset)
        classes.append(tensors[offset + 4 : offset + 4 + size].decode())
        offset += 4 + size
    best = np.argsort(-probabilities, axis=1)[:, :2]
    labels = load_labels()
    assert classes == [
        f"{probabilities[row, i]:f}:{i}:{labels[i].name}" for row in range(2) for i in best[row]
    ]
    got = np.frombuffer(tensors[sizes[0] :], "<f4").reshape(2, 1000)
    np.testing.assert_array_equal(got, probabilities)


def test_without_binary_outputs_the_response_is_plain_json():
    probabilities = np.full((1, 1000), 0.001, np.float32)
    request = oip.InferRequest(None, "resnet50", None, None, [oip.RequestedOutput("probabilities")])

    response = oip.infer_response(request, _result(probabilities), load_labels())

    assert response["Content-Type"] == "application/json"
    assert oip.HEADER_LENGTH not in response
    [output] = json.loads(response.content)["outputs"]
    assert output["data"] == pytest.approx([0.001] * 1000)
