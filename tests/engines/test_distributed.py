"""The distributed engine on the CPU: 2 real processes, gloo, transformers tensor parallelism."""

import os
import signal
import time

import psutil
import pytest

from engines import registry
from engines.distributed import DistributedEngine
from engines.text import SamplingParams, TextModel

GREEDY = SamplingParams(max_new_tokens=24, temperature=0)


@pytest.fixture(scope="module")
def tp_engine(text_spec):
    engine = DistributedEngine(text_spec, world_size=2, device="cpu", timeout_s=60)
    engine.start()
    yield engine
    engine.shutdown()


def test_tensor_parallel_output_equals_single_process(tp_engine, text_spec):
    single = TextModel(registry.get(text_spec.id))
    for prompt in ("If the file", "Return the number of"):
        expected = list(single.generate(prompt, GREEDY))[-1].text
        steps = list(tp_engine.generate(prompt, GREEDY))
        assert steps[-1].text == expected
        assert [s.tokens for s in steps] == list(range(1, len(steps) + 1))  # streamed


def test_killing_a_worker_mid_request_fails_clearly_and_the_engine_recovers(tp_engine):
    before = tp_engine.restarts
    victim = tp_engine.processes[1].pid
    stream = tp_engine.generate("If the file", SamplingParams(max_new_tokens=200, temperature=0))
    next(stream)  # the request is running on both ranks
    os.kill(victim, signal.SIGKILL)
    start = time.time()
    with pytest.raises(RuntimeError, match="worker aoti-tp-rank1 died"):
        for _ in stream:
            pass
    assert time.time() - start < 30  # detected, not hung
    assert tp_engine.restarts == before + 1 and victim not in tp_engine.pids
    assert list(tp_engine.generate("If the file", GREEDY))[-1].tokens >= 5  # serving again


def test_clean_shutdown_leaves_no_processes(text_spec):
    engine = DistributedEngine(text_spec, world_size=2, device="cpu")
    engine.start()
    pids = engine.pids
    assert all(psutil.pid_exists(p) for p in pids)
    engine.shutdown()
    time.sleep(0.5)
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert engine.processes == []


# --- image: diffusers context parallelism -------------------------------------------------------

def test_context_parallel_image_equals_single_process(flux_spec):
    import numpy as np

    from engines.image import ImageModel, ImageParams

    params = ImageParams(height=32, width=32, steps=3, seed=7)
    single = ImageModel(flux_spec).generate("a red circle", params)
    engine = DistributedEngine(flux_spec, world_size=2, device="cpu", timeout_s=120)
    try:
        engine.start()
        assert [p.name for p in engine.processes] == ["aoti-cp-rank0", "aoti-cp-rank1"]
        split = engine.generate_image("a red circle", params)
        other = engine.generate_image("a blue square", params)
    finally:
        engine.shutdown()
    a, b = np.asarray(single.image, dtype=np.int16), np.asarray(split.image, dtype=np.int16)
    assert a.shape == b.shape == (32, 32, 3)
    assert np.abs(a - b).max() <= 1  # the same image: sequence split over 2 ranks, attention all-to-all
    assert len(split.step_ms) == 3
    assert not np.array_equal(np.asarray(other.image), np.asarray(split.image))  # the prompt reaches the workers


def test_a_model_without_a_context_parallel_plan_is_refused_clearly(image_spec):
    engine = DistributedEngine(image_spec, world_size=2, device="cpu", timeout_s=60)
    with pytest.raises(RuntimeError, match="tiny-shapes-unet failed to start: ValueError: UNet2DModel has no context-parallel plan in diffusers"):
        engine.start()
    assert engine.processes == []


def test_step_caching_is_refused_on_the_multi_gpu_engine_before_any_worker_runs():
    """Each rank would judge the residual on its own part of the sequence and could skip blocks
    another rank runs; refused with the reason (no worker started, nothing to hang)."""
    from engines.image import ImageParams

    engine = DistributedEngine(registry.get("tiny-shapes-dit"), world_size=2, device="cpu")
    with pytest.raises(ValueError, match="not offered on the multi-GPU engine"):
        engine.generate_image("a red circle", ImageParams(32, 32, 4, step_cache="fast"))
    assert engine.processes == []
