"""classifier.runtime: the process's one engine slot, loaded once however often started."""

import threading

import pytest

from classifier.engines import ModelLoadError
from classifier.errors import ModelNotReady
from classifier.runtime import EngineSlot

from .helpers import model_info


class _FakeEngine:
    info = model_info("fake")

    def predict(self, batch):
        return batch


def test_engine_slot_loads_once_however_often_started():
    calls = []
    gate = threading.Event()

    def factory():
        calls.append(1)
        gate.wait(5)
        return _FakeEngine()

    slot = EngineSlot()
    slot.start(factory)
    slot.start(factory)
    assert slot.state == "loading"
    with pytest.raises(ModelNotReady):
        slot.get()
    gate.set()
    slot.wait(5)
    slot.start(factory)
    assert slot.state == "ready"
    assert isinstance(slot.get(), _FakeEngine)
    assert len(calls) == 1


def test_engine_slot_reports_a_failed_load():
    def factory():
        raise ModelLoadError("bad weights; set CLASSIFIER_WEIGHTS")

    seen = []
    slot = EngineSlot()
    with pytest.raises(ModelLoadError):
        slot.start(factory, background=False, on_failure=seen.append)
    assert slot.state == "failed"
    assert seen == ["bad weights; set CLASSIFIER_WEIGHTS"]
    with pytest.raises(ModelNotReady, match="CLASSIFIER_WEIGHTS"):
        slot.get()
