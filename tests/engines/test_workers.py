"""What crosses between the main process and a GPU worker: plain data, and the GPU time asked for."""

import multiprocessing
import pickle

from engines.workers import (
    MARGIN,
    MAX_COMPILE_SECONDS,
    MAX_SECONDS,
    MIN_SECONDS,
    Binding,
    RunReport,
    count_call,
    gpu_seconds_compile,
    gpu_seconds_image,
    gpu_seconds_text,
)


def test_binding_and_report_survive_pickling():
    binding = Binding("tiny-llama-pydoc", {"key": "ab" * 16, "transforms": [{"name": "Float8Rowwise", "version": 1, "emulate": False}]})
    report = RunReport("tiny-llama-pydoc", "aoti", bind_s=0.04, fallbacks=["cuda graphs -> off: x"])
    assert pickle.loads(pickle.dumps(binding)) == binding
    assert pickle.loads(pickle.dumps(report)).to_dict() == report.to_dict()


def _calls_in_child(queue) -> None:
    queue.put(count_call())


def test_a_forked_worker_counts_its_own_calls():
    count_call()
    assert count_call() >= 2
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_calls_in_child, args=(queue,))
    child.start()
    child.join(30)
    assert queue.get(timeout=5) == 1  # a fresh fork starts at its first call


def test_text_duration_follows_the_measured_speed():
    unmeasured = gpu_seconds_text(200, None, None)
    fast = gpu_seconds_text(200, 0.004, 0.5)  # 250 tokens/s, a fresh worker binds in 0.5 s
    assert fast == MIN_SECONDS < unmeasured
    slow = gpu_seconds_text(200, 0.5, 2.0)
    assert slow == int(MARGIN * (2.0 + 200 * 0.5))
    assert gpu_seconds_text(10_000, 0.5, 2.0) == MAX_SECONDS


def test_image_duration_scales_with_steps_and_pixels():
    measured = gpu_seconds_image(28, 1024 * 1024, 2.0, 1024 * 1024, 5.0)
    assert measured == int(MARGIN * (5.0 + 28 * 2.0))
    assert gpu_seconds_image(28, 512 * 512, 2.0, 1024 * 1024, 5.0) < measured
    assert gpu_seconds_image(4, 32 * 32, 0.01, 32 * 32, 0.05) == MIN_SECONDS


def test_compile_duration_from_the_last_compiles():
    assert gpu_seconds_compile([40.0, 20.0]) == int(MARGIN * 60)
    assert gpu_seconds_compile([None]) > gpu_seconds_compile([40.0])
    assert gpu_seconds_compile([1000.0, 1000.0]) == MAX_COMPILE_SECONDS
