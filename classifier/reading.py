"""The one way a request body is read, with one set of bounds, for /predict (multipart and
JSON), the page and /v2: the body's size, JSON's count of values, images per request and
bytes per image, each checked before the step it guards (reading, parsing, decoding).
Pixels and decode memory are images.py's. Every refusal is a classifier.errors class.

A body may come compressed (`Content-Encoding: gzip` or `deflate`, as tritonclient sends
it with `request_compression_algorithm`): it is decompressed before it is parsed, a piece
at a time, and refused (413) as soon as it grows past CLASSIFIER_MAX_REQUEST_BYTES, the
limit of a plain body. A 10 kB bomb that would expand to 10 GB costs at most that limit.

Why JSON is counted before it is parsed: `json.loads` turns each value into a Python
object of 24-64 bytes whatever its size in the body (`{}` is two bytes and a 64-byte dict),
so a 32 MB body of empty objects takes ~900 MB. The tokens that make an object (`,` `:`
`[` `{`) are counted in the raw bytes instead, which costs one pass and no memory.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import zlib
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, TooManyFilesSent
from django.http import HttpRequest, UnreadablePostError
from django.http.multipartparser import MultiPartParserError
from django.template.defaultfilters import filesizeformat

from .errors import (
    BadRequest,
    ImageTooLarge,
    InvalidBase64,
    InvalidJSON,
    InvalidParameter,
    LengthRequired,
    MissingImage,
    RequestTimeout,
    RequestTooLarge,
    TooManyImages,
    UnsupportedMediaType,
)
from .services import Upload

# Values a classic /predict JSON body may hold: its images, options, and room for fields
# clients add (ignored). Not a tensor format: thousands of values are an attack.
PREDICT_JSON_VALUES = 1000
# Each JSON token that makes a Python object (a value after a comma or colon, a list, an
# object); the count of all four bounds the objects a body can turn into.
_JSON_TOKENS = (b",", b":", b"[", b"{")
# Content-Encodings of a request body and zlib's `wbits` for each, tried in order: gzip
# (RFC 1952), and deflate as HTTP defines it (zlib's format, RFC 1950) or, as some clients
# send it, a raw deflate stream.
CONTENT_ENCODINGS = {"gzip": (31,), "x-gzip": (31,), "deflate": (15, -15)}
# A compressed body is decompressed this many bytes at a time.
_INFLATE_CHUNK_BYTES = 256 * 1024


def content_length(request: HttpRequest) -> int:
    """The request's declared body size; BadRequest if it is not a number."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = -1
    if length < 0:
        raise BadRequest("Invalid Content-Length header.")
    return length


def check_length(request: HttpRequest, *, people: bool = False) -> int:
    """The body's size, once it is known to be declared and within
    CLASSIFIER_MAX_REQUEST_BYTES: before anything reads it. `people`: the page's wording."""
    length = content_length(request)
    if not length and "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
        # Django reads a body up to its Content-Length only: a chunked one would look empty.
        raise LengthRequired(
            "Send the body with a Content-Length header (chunked uploads are not accepted)."
        )
    limit = settings.CLASSIFIER_MAX_REQUEST_BYTES
    if length > limit:
        raise RequestTooLarge(
            f"These images come to {filesizeformat(length)}; the limit is "
            f"{filesizeformat(limit)} at once."
            if people
            else f"The request body is {length} bytes; the limit is {limit} bytes."
        )
    return length


def read_body(request: HttpRequest) -> bytes:
    """The whole body, within the bounds of `check_length`, decompressed if it came
    compressed (within the same limit)."""
    check_length(request)
    _decompress(request)
    return _raw_body(request)


def _raw_body(request: HttpRequest) -> bytes:
    try:
        return request.body
    except RequestDataTooBig as exc:
        raise RequestTooLarge(str(exc)) from None
    except UnreadablePostError:
        raise body_stalled() from None


def content_encoding(request: HttpRequest) -> str | None:
    """The body's Content-Encoding (lower case), None for a plain body; 415 for one this
    server does not decompress."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding not in CONTENT_ENCODINGS:
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding[:40]!r} is not supported: send the body as it is, "
            "or compressed with gzip or deflate."
        )
    return encoding


def _decompress(request: HttpRequest) -> None:
    """Put the decompressed body in place of a compressed one, before anything parses it
    (the JSON readers and Django's multipart parser both read `request._body` once it is
    there), with the Content-Length it now has."""
    encoding = content_encoding(request)
    if encoding is None:
        return
    body = inflate(_raw_body(request), encoding, settings.CLASSIFIER_MAX_REQUEST_BYTES)
    request._body = body
    request.META["CONTENT_LENGTH"] = str(len(body))
    del request.META["HTTP_CONTENT_ENCODING"]


def inflate(data: bytes, encoding: str, limit: int) -> bytes:
    """`data` decompressed (`encoding`: a key of CONTENT_ENCODINGS); RequestTooLarge as
    soon as it comes to more than `limit` bytes, BadRequest if it is not that encoding's
    format. Memory: at most `limit` bytes of output, plus one chunk."""
    for wbits in CONTENT_ENCODINGS[encoding]:
        try:
            return _inflate(data, wbits, limit)
        except zlib.error:
            continue
    raise BadRequest(f"The body is not valid {encoding} data (Content-Encoding: {encoding}).")


def _inflate(data: bytes, wbits: int, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    out, pending = io.BytesIO(), data
    while True:
        piece = inflater.decompress(pending, _INFLATE_CHUNK_BYTES)
        pending = inflater.unconsumed_tail
        if out.tell() + len(piece) > limit:
            raise RequestTooLarge(
                f"The request body is more than {limit} bytes once decompressed; the limit "
                f"is {limit} bytes."
            )
        out.write(piece)
        if inflater.eof or not (piece or pending):
            break
    if not inflater.eof or inflater.unused_data:
        raise BadRequest("The compressed body is cut short, or has data after its end.")
    return out.getvalue()


def read_json(request: HttpRequest, *, max_values: int) -> Any:
    """The body's JSON value, holding at most `max_values` values."""
    return load_json(read_body(request), max_values=max_values)


def load_json(data: bytes, *, max_values: int, hint: str = "") -> Any:
    """The JSON value in `data`, counted (see the module's docstring) before it is parsed.
    Numbers must be finite: `1e999` and `NaN` are refused, not turned into inf and nan."""
    values = sum(data.count(token) for token in _JSON_TOKENS)
    if values > max_values:
        raise RequestTooLarge(
            f"The JSON holds ~{values} values; the most a request may carry is {max_values}{hint}."
        )
    try:
        return json.loads(data, parse_float=_finite_float, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJSON(f"The body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidJSON("The body's JSON is nested too deeply.") from None


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:20]} is too large")
    return number


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def read_images(request: HttpRequest, *, people: bool = False) -> list[Upload]:
    """The `image` fields of a multipart form, in order, within every bound: the body
    (`check_length`), CLASSIFIER_MAX_IMAGES and CLASSIFIER_MAX_IMAGE_BYTES each. The page
    (`people`) gets its errors in words for people."""
    check_length(request, people=people)
    _decompress(request)
    try:
        files = request.FILES.getlist("image")
    except TooManyFilesSent:
        limit = settings.CLASSIFIER_MAX_IMAGES
        raise TooManyImages(
            f"Too many images; the limit is {limit} at once."
            if people
            else f"Too many files; the limit is {limit} images per request."
        ) from None
    except RequestDataTooBig as exc:
        raise RequestTooLarge(str(exc)) from None
    except UnreadablePostError:
        raise body_stalled() from None
    except (MultiPartParserError, SuspiciousOperation) as exc:
        raise BadRequest(
            "The form could not be read; send it again."
            if people
            else f"Malformed form data: {exc}"
        ) from None
    if not files:
        raise MissingImage(
            "Choose an image first." if people else "Send the image in a form field named `image`."
        )
    check_count(len(files))
    limit = settings.CLASSIFIER_MAX_IMAGE_BYTES
    for upload in files:
        if upload.size > limit:
            if people:
                name = upload.name if len(files) > 1 and upload.name else "This image"
                message = (
                    f"{name} is {filesizeformat(upload.size)}; the limit is "
                    f"{filesizeformat(limit)}."
                )
            else:
                name = upload.name or "The image"
                message = f"{name} is {upload.size} bytes; the limit is {limit} bytes."
            raise ImageTooLarge(message)
    return [Upload(data=_upload_bytes(upload), filename=upload.name or "") for upload in files]


def form_value(request: HttpRequest, name: str):
    """A form field, else the query parameter, else None (after `read_images`)."""
    return request.POST.get(name, request.GET.get(name))


def _upload_bytes(upload) -> bytes:
    # An in-memory upload's BytesIO hands over its buffer without a copy; read() would
    # copy it (3 MB per 12 MP photo, times every request in flight).
    getvalue = getattr(upload.file, "getvalue", None)
    return getvalue() if getvalue else upload.read()


def decode_base64(encoded: str, position: int) -> bytes:
    """The bytes of image `position` (from 1) sent as base64 or as a data: URL, refused
    by its length before it is decoded when it would exceed CLASSIFIER_MAX_IMAGE_BYTES."""
    if encoded.startswith("data:") and "," in encoded:  # data URL from a browser
        encoded = encoded.split(",", 1)[1]
    size = len(encoded) * 3 // 4 - encoded.count("=", -2)
    limit = settings.CLASSIFIER_MAX_IMAGE_BYTES
    if size > limit:
        raise ImageTooLarge(f"Image {position} is {size} bytes; the limit is {limit} bytes.")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidBase64(f"Image {position} is not valid base64.") from None


def check_count(count: int) -> None:
    if count > settings.CLASSIFIER_MAX_IMAGES:
        raise TooManyImages(
            f"{count} images sent; the limit is {settings.CLASSIFIER_MAX_IMAGES} per request."
        )


def body_stalled() -> RequestTimeout:
    # The client stopped sending its body, or sent it slower than its deadline allows.
    return RequestTimeout("The request body stopped arriving; send it again.")


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def flag(raw, name: str) -> bool:
    """A yes/no option as a form field, query parameter or JSON value; absent: no."""
    if raw is None or isinstance(raw, bool):
        return bool(raw)
    text = str(raw).strip().lower() if isinstance(raw, str | int) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidParameter(f"{name} must be 1 or 0 (true or false).")


def top_k(raw) -> int:
    """`top_k` as a form field, query parameter or JSON value: a whole number from 1 to
    CLASSIFIER_MAX_TOP_K (absent: CLASSIFIER_DEFAULT_TOP_K)."""
    if raw is None or raw == "":
        return settings.CLASSIFIER_DEFAULT_TOP_K
    k = 0
    if isinstance(raw, int) and not isinstance(raw, bool):
        k = raw
    elif (
        isinstance(raw, float)
        and raw.is_integer()
        or (
            isinstance(raw, str)
            and len(raw) <= 8
            and raw.strip().isascii()
            and raw.strip().isdecimal()
        )
    ):
        k = int(raw)
    if not 1 <= k <= settings.CLASSIFIER_MAX_TOP_K:
        raise InvalidParameter(
            f"top_k must be a whole number from 1 to {settings.CLASSIFIER_MAX_TOP_K}."
        )
    return k
