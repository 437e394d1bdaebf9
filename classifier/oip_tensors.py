"""The Open Inference Protocol's input tensors for our model, as JSON `data` (flat or
nested) or as binary tensor data after the JSON header: `image` (BYTES, image files),
`pixels` (FP32, (N, 224, 224, 3) as `model.preprocess` makes them) and `rgb` (FP32,
(N, 224, 224, 3) RGB levels from 0 to 255, as Triton's image_client.py sends a picture).
Each is checked against its datatype, shape and every limit of /predict before it is
used; errors are classifier.errors classes.
"""

from __future__ import annotations

import struct

import numpy as np

from . import reading
from .errors import (
    InvalidBase64,
    InvalidDatatype,
    InvalidParameter,
    InvalidRequest,
    InvalidShape,
    InvalidTensor,
)
from .model import INPUT_SIZE, preprocess
from .services import Upload

IMAGE_INPUT = "image"
PIXELS_INPUT = "pixels"
RGB_INPUT = "rgb"
PIXELS_SHAPE = (INPUT_SIZE, INPUT_SIZE, 3)
# The largest magnitude a `pixels` value may have. Preprocessed pictures lie within -123.68
# to 151.061; far beyond, the forward pass overflows (3e38 gives NaN probabilities).
PIXELS_BOUND = 1000.0
# Each BYTES element in binary form: its length as 4 bytes, little-endian, then itself.
_ELEMENT_LENGTH = struct.Struct("<I")


def image_files(tensor: dict, tensor_bytes: bytes) -> list[Upload]:
    count = _batch_size(tensor, "BYTES", ())
    raw = _binary(tensor, tensor_bytes)
    if raw is None:
        data = _flat(_data(tensor), count)
        if not all(isinstance(element, str) for element in data):
            raise InvalidBase64(
                f"In JSON, each {IMAGE_INPUT!r} element is an image file as a base64 string.",
            )
        return [Upload(data=reading.decode_base64(e, i)) for i, e in enumerate(data, start=1)]
    files, offset = [], 0
    while offset < len(raw):
        if offset + _ELEMENT_LENGTH.size > len(raw):
            break
        (size,) = _ELEMENT_LENGTH.unpack_from(raw, offset)
        offset += _ELEMENT_LENGTH.size
        if offset + size > len(raw):
            break
        files.append(Upload(data=raw[offset : offset + size]))
        offset += size
    if offset != len(raw) or len(files) != count:
        raise InvalidTensor(
            f"The binary {IMAGE_INPUT!r} data must hold {count} elements, each a 4-byte "
            "little-endian length and that many bytes.",
        )
    return files


def pixels(tensor: dict, tensor_bytes: bytes) -> np.ndarray:
    """The `pixels` input: the model's input as it is."""
    pixels = _images(tensor, tensor_bytes)
    if np.abs(pixels).max() > PIXELS_BOUND:
        raise InvalidTensor(
            f"The {PIXELS_INPUT!r} data holds values beyond +-{PIXELS_BOUND:g}; a picture "
            "preprocessed as the model expects (caffe mode) lies within -123.68 to 151.061."
        )
    return pixels


def rgb(tensor: dict, tensor_bytes: bytes) -> np.ndarray:
    """The `rgb` input (RGB levels 0 to 255), made into the model's input."""
    levels = _images(tensor, tensor_bytes)
    low, high = float(levels.min()), float(levels.max())
    if low < 0 or high > 255:
        raise InvalidTensor(
            f"The {RGB_INPUT!r} data must be RGB levels from 0 to 255 (image_client.py's "
            f"`-s NONE`, its default); these run from {low:g} to {high:g}: send the "
            "picture unscaled."
        )
    return preprocess(levels)


def _images(tensor: dict, tensor_bytes: bytes) -> np.ndarray:
    """An FP32 (N, 224, 224, 3) input of finite values."""
    name = tensor.get("name")
    count = _batch_size(tensor, "FP32", PIXELS_SHAPE)
    shape = (count, *PIXELS_SHAPE)
    raw = _binary(tensor, tensor_bytes)
    if raw is None:
        try:
            values = np.asarray(_data(tensor), dtype=np.float32)
        except (TypeError, ValueError):
            raise InvalidTensor(f"The {name!r} data must be numbers (flat or nested).") from None
    else:
        if len(raw) != np.prod(shape) * 4:
            raise InvalidTensor(
                f"The binary {name!r} data must be {np.prod(shape) * 4} bytes "
                f"(shape {list(shape)}, FP32 little-endian); it is {len(raw)}.",
            )
        values = np.frombuffer(raw, dtype="<f4")
    if values.size != np.prod(shape):
        raise InvalidTensor(
            f"The {name!r} data has {values.size} values; shape {list(shape)} needs "
            f"{np.prod(shape)}.",
        )
    images = values.reshape(shape).astype(np.float32, copy=False)
    if not np.isfinite(images).all():
        raise InvalidTensor(f"The {name!r} data holds NaN or infinite values.")
    return images


def pack_elements(elements: list[bytes]) -> bytes:
    """BYTES elements in binary form (see _ELEMENT_LENGTH)."""
    return b"".join(_ELEMENT_LENGTH.pack(len(e)) + e for e in elements)


def parameters(holder: dict, where: str) -> dict:
    parameters = holder.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidParameter(f"The `parameters` of {where} must be an object.")
    return parameters


def _batch_size(tensor: dict, datatype: str, item_shape: tuple[int, ...]) -> int:
    """The batch size of `tensor`, checked against its datatype and shape. A BYTES input
    (one element per item) may say [N] or, as Triton's model configuration spells it,
    [N, 1]."""
    name = tensor.get("name")
    if tensor.get("datatype") != datatype:
        raise InvalidDatatype(
            f"Input {name!r} is {datatype}; the request says {tensor.get('datatype')!r}.",
        )
    shape = tensor.get("shape")
    expected = [-1, *item_shape]
    if isinstance(shape, list) and not item_shape and shape[1:] == [1]:
        shape = shape[:1]
    if (
        not isinstance(shape, list)
        or len(shape) != len(expected)
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or list(shape[1:]) != list(item_shape)
        or shape[0] < 1
    ):
        raise InvalidShape(
            f"Input {name!r} has shape {expected} (N >= 1); the request says "
            f"{tensor.get('shape')!r}.",
        )
    reading.check_count(shape[0])
    return shape[0]


def _binary(tensor: dict, tensor_bytes: bytes) -> bytes | None:
    """The input's binary data (it is the only input: all of the bytes after the header),
    or None when it comes as JSON `data`."""
    size = parameters(tensor, f"input {tensor.get('name')!r}").get("binary_data_size")
    if size is None:
        if tensor_bytes:
            raise InvalidRequest(
                "Binary data after the header, but no input says `binary_data_size`.",
            )
        return None
    if "data" in tensor:
        raise InvalidRequest("An input has either `data` or `binary_data_size`, not both.")
    if not isinstance(size, int) or isinstance(size, bool) or size != len(tensor_bytes):
        raise InvalidRequest(
            f"`binary_data_size` ({size!r}) must equal the bytes after the JSON header "
            f"({len(tensor_bytes)}).",
        )
    return tensor_bytes


def _data(tensor: dict) -> list:
    data = tensor.get("data")
    if not isinstance(data, list):
        raise InvalidTensor(f"Input {tensor.get('name')!r} needs `data` (a list) or binary data.")
    return data


def _flat(data: list, count: int) -> list:
    """Elements of a flat or nested `data` list, in row-major order."""
    flat: list = []
    pending = [iter(data)]
    while pending:
        for element in pending[-1]:
            if isinstance(element, list):
                pending.append(iter(element))
                break
            flat.append(element)
        else:
            pending.pop()
    if len(flat) != count:
        raise InvalidTensor(f"The shape says {count} elements; `data` has {len(flat)}.")
    return flat
