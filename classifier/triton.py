"""Triton's extensions of the Open Inference Protocol that its tools read before they
infer: the model configuration (GET /v2/models/{name}/config, what perf_analyzer and
image_client.py check), statistics (GET /v2/models/stats, perf_analyzer's server-side
breakdown) and the model repository index (POST /v2/repository/index).

Each is true to what this server does: the batch limit, the batcher's wait, queue and
timeout are the settings it runs with, and the statistics its own counters
(model_stats.py).

https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_model_configuration.md
https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_statistics.md
https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_model_repository.md
"""

from __future__ import annotations

from django.conf import settings

from . import services
from .model_stats import Registry
from .oip import INPUT_TENSORS, MODEL_INPUTS, MODEL_VERSION, OUTPUT
from .oip_tensors import IMAGE_INPUT

EXTENSIONS = ("model_configuration", "statistics", "model_repository")
# Triton's names of the datatypes (ModelConfig's DataType).
_DATA_TYPES = {"BYTES": "TYPE_STRING", "FP32": "TYPE_FP32"}


def model_config(name: str, platform: str) -> dict:
    """The Triton model configuration of the model `name` (a key of oip.MODEL_INPUTS)."""
    inputs = MODEL_INPUTS[name]
    return {
        "name": name,
        "platform": platform,
        "backend": platform,
        "version_policy": {"specific": {"versions": [int(MODEL_VERSION)]}},
        # Images per forward pass; a request may carry up to CLASSIFIER_MAX_IMAGES.
        "max_batch_size": settings.CLASSIFIER_MAX_BATCH,
        # A model with two inputs takes either one (a request sends exactly one).
        "input": [_input(tensor, optional=len(inputs) > 1) for tensor in inputs],
        "output": [
            {
                "name": OUTPUT,
                "data_type": "TYPE_FP32",
                "dims": [len(services.labels())],
                "label_filename": "",
                "is_shape_tensor": False,
            }
        ],
        "batch_input": [],
        "batch_output": [],
        "optimization": {"input_pinned_memory": {"enable": False}},
        # The micro-batcher (classifier/batching.py): requests share a forward pass, the
        # first waiting up to the batch wait for others; a full queue or a wait past the
        # queue timeout is refused (503).
        "dynamic_batching": {
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": settings.CLASSIFIER_BATCH_WAIT_MS * 1000,
            "preserve_ordering": False,
            "priority_levels": 0,
            "default_priority_level": 0,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": settings.CLASSIFIER_QUEUE_TIMEOUT_MS * 1000,
                "allow_timeout_override": False,
                "max_queue_size": settings.CLASSIFIER_MAX_QUEUE,
            },
        },
        # One model instance: the process's engine, fed by one inference thread.
        "instance_group": [
            {"name": name, "kind": "KIND_CPU", "count": 1, "gpus": [], "profile": []}
        ],
        "default_model_filename": "",
        "cc_model_filenames": {},
        "metric_tags": {},
        "parameters": {},
        "model_warmup": [],
    }


def _input(tensor: str, *, optional: bool) -> dict:
    datatype, shape = INPUT_TENSORS[tensor]
    return {
        "name": tensor,
        "data_type": _DATA_TYPES[datatype],
        # An image file is one opaque element; the tensors are pictures, NHWC.
        "format": "FORMAT_NONE" if tensor == IMAGE_INPUT else "FORMAT_NHWC",
        "dims": shape[1:],
        "is_shape_tensor": False,
        "allow_ragged_batch": False,
        "optional": optional,
    }


def statistics(registry: Registry, names: list[str]) -> dict:
    """Triton's statistics of the models `names`."""
    return {"model_stats": [registry[name].as_json(name, MODEL_VERSION) for name in names]}


def repository_index(state: str, error: str | None, *, ready_only: bool) -> list[dict]:
    """The models in the repository and their state, from the engine's `state` (runtime's
    idle, loading, ready or failed)."""
    triton_state = {"ready": "READY", "loading": "LOADING"}.get(state, "UNAVAILABLE")
    if ready_only and triton_state != "READY":
        return []
    entries = []
    for name in MODEL_INPUTS:
        entry = {"name": name, "version": MODEL_VERSION, "state": triton_state}
        if triton_state != "READY":
            entry["reason"] = error or f"the model is {state}"
        entries.append(entry)
    return entries
