import json

from engines.metrics import Metrics, RequestRecord


def test_ring_buffer_stays_bounded_and_summarises():
    metrics = Metrics(capacity=8)
    for i in range(50):
        metrics.record(RequestRecord("m", "text", "aoti", latency_s=1.0 + i, ttft_s=0.1, tokens=10, tokens_per_s=100.0 + i))
        metrics.sample_memory()
    snap = metrics.snapshot()
    assert len(snap["requests"]) == 8 and len(snap["memory"]) == 8
    assert snap["requests"][0]["latency_s"] == 43.0  # the oldest kept
    assert snap["summary"]["count"] == 8 and snap["summary"]["median_tokens_per_s"] == 146.0
    json.dumps(snap)  # the API form is plain JSON


def test_errors_are_counted_and_left_out_of_medians():
    metrics = Metrics()
    metrics.record(RequestRecord("m", "image", "eager", latency_s=2.0, steps=20, step_ms=100.0))
    metrics.record(RequestRecord("m", "image", "eager", latency_s=99.0, ok=False, error="boom"))
    summary = metrics.snapshot()["summary"]
    assert summary["errors"] == 1 and summary["median_latency_s"] == 2.0 and summary["median_step_ms"] == 100.0


def test_a_warm_up_call_is_counted_apart_from_the_speeds():
    """A call whose process bound the graphs first (a fresh ZeroGPU worker) pays for that: counted, not
    mixed into the medians the panel shows."""
    metrics = Metrics()
    metrics.record(RequestRecord("m", "text", "aoti", latency_s=9.0, tokens_per_s=20.0, warmup=True))
    metrics.record(RequestRecord("m", "text", "aoti", latency_s=0.3, tokens_per_s=250.0))
    summary = metrics.snapshot()["summary"]
    assert summary["count"] == 2 and summary["warmups"] == 1 and summary["errors"] == 0
    assert summary["median_latency_s"] == 0.3 and summary["median_tokens_per_s"] == 250.0
