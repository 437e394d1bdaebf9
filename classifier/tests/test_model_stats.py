"""Triton's statistics as the service keeps them (classifier/model_stats.py): pure unit
tests; the live counters through tritonclient are in test_v2.py."""

from classifier.model_stats import Registry, RequestTimes


def test_requests_and_passes_add_up_in_tritons_shape():
    registry = Registry()
    times = RequestTimes(
        total=0.5, compute_input=0.1, queue=0.05, compute_infer=0.3, compute_output=0.01
    )
    registry["resnet50"].succeeded(2, times)
    registry["resnet50"].succeeded(1, times)
    registry["resnet50"].failed(0.2)
    # One pass with requests of both models, one of resnet50's alone.
    registry.executed(["resnet50", "resnet50_rgb", "resnet50"], 3, 0.001, 0.3, 0.002)
    registry.executed(["resnet50", None], 1, 0.001, 0.1, 0.002)

    stats = registry["resnet50"].as_json("resnet50", "1")
    parts = stats["inference_stats"]
    assert (stats["inference_count"], stats["execution_count"]) == (3, 2)
    assert parts["success"] == {"count": 2, "ns": 1_000_000_000}
    assert parts["fail"] == {"count": 1, "ns": 200_000_000}
    assert parts["queue"] == {"count": 2, "ns": 100_000_000}
    assert parts["compute_infer"]["ns"] == 600_000_000
    assert stats["last_inference"] > 0
    assert [(b["batch_size"], b["compute_infer"]) for b in stats["batch_stats"]] == [
        (1, {"count": 1, "ns": 100_000_000}),
        (3, {"count": 1, "ns": 300_000_000}),
    ]
    rgb = registry["resnet50_rgb"].as_json("resnet50_rgb", "1")
    assert (rgb["inference_count"], rgb["execution_count"]) == (0, 1)
    assert rgb["last_inference"] == 0
    assert all(isinstance(v["ns"], int) for v in parts.values())
