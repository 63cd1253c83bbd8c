import pickle
import subprocess
import sys
import textwrap
from unittest import mock

import pytest
import torch

import aoti
from tests import tiny


def test_flux_compiled_matches_eager_on_fresh_inputs(flux_compiled):
    model, _ = flux_compiled
    for _ in range(3):
        inputs = tiny.flux_inputs()
        with torch.no_grad():
            compiled = model(**inputs)[0]
            eager = model.forward.eager(**inputs)[0]
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    assert aoti.status_of(model).compiled_calls >= 3


def test_apply_keeps_module_attributes(flux_compiled):
    model, _ = flux_compiled
    assert model.config.num_layers == 1 and model.dtype == torch.float32 and model.device.type == "cpu"


def test_out_of_range_input_runs_eager_and_is_counted(flux_compiled):
    model, _ = flux_compiled
    before = aoti.status_of(model).guard_fallbacks
    inputs = tiny.flux_inputs(img=20)
    with torch.no_grad():
        out = model(**inputs)[0]
        eager = model.forward.eager(**inputs)[0]
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
    status = aoti.status_of(model)
    assert status.guard_fallbacks == before + 1 and "dim 1 must be 16" in status.last_guard_reason


def test_compiled_graph_aliases_module_weights(flux_compiled):
    model, _ = flux_compiled
    inputs = tiny.flux_inputs()
    weight = model.proj_out.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(2.0)
            compiled = model(**inputs)[0]
            eager = model.forward.eager(**inputs)[0]
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
        swapped = model.forward
        assert any(t.data_ptr() == weight.data_ptr() for t in swapped.weights.values())
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def test_restore_brings_eager_back_exactly(flux_compiled, cache):
    model, artifact = flux_compiled
    inputs = tiny.flux_inputs()
    with torch.no_grad():
        eager = model.forward.eager(**inputs)[0]
        status = aoti.restore(model)
        restored = model(**inputs)[0]
    assert status.runtime == "eager" and "forward" not in model.__dict__
    assert torch.equal(restored, eager)
    assert aoti.apply(artifact, model).runtime == "aoti"


def test_bucket_dispatch_runs_each_bucket_compiled(cache):
    model = tiny.flux()
    with aoti.capture(model, stop=False) as calls, torch.no_grad():
        for img in (16, 36):
            model(**tiny.flux_inputs(img=img))
    artifact = aoti.compile(model, calls, aoti.CompileOptions(dispatch="buckets"), cache=cache)
    assert artifact.status.graphs == 2
    aoti.apply(artifact, model)
    for img in (36, 16):
        inputs = tiny.flux_inputs(img=img)
        with torch.no_grad():
            torch.testing.assert_close(model(**inputs)[0], model.forward.eager(**inputs)[0], rtol=1e-4, atol=1e-5)
    status = aoti.status_of(model)
    assert status.compiled_calls == 2 and status.guard_fallbacks == 0


def test_dynamic_dims_over_several_sizes_and_a_size_one_graph(cache):
    model = tiny.llama()
    aoti.transform(model, [aoti.FuseProjections()])
    with aoti.capture(model, stop=False) as calls, torch.no_grad():
        for seq in (1, 4, 8, 24):
            model(input_ids=tiny.token_ids(seq))
    artifact = aoti.compile(model, calls, aoti.CompileOptions(dispatch="dynamic"), cache=cache)
    assert artifact.status.graphs == 2  # seq 1 static, seq 4..24 dynamic
    assert artifact.manifest["key_fields"]["transforms"] == [{"name": "FuseProjections", "version": 1}]
    assert artifact.status.transforms == ["FuseProjections: 4 projection groups"]
    aoti.apply(artifact, model)
    for seq in (1, 5, 13, 24):
        ids = tiny.token_ids(seq)
        with torch.no_grad():
            out = model(input_ids=ids).logits
            ref = model.forward.eager(input_ids=ids).logits
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert aoti.status_of(model).compiled_calls == 4
    ids = tiny.token_ids(40)  # above the compiled range: eager, counted
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, model.forward.eager(input_ids=ids).logits)
    assert aoti.status_of(model).guard_fallbacks == 1


def test_cache_hit_in_a_fresh_process_loads_without_compiling(flux_compiled, cache_dir):
    _, artifact = flux_compiled
    script = textwrap.dedent(f"""
        import json, torch, aoti
        from tests import tiny
        model = tiny.flux()
        with aoti.capture(model) as call, torch.no_grad():
            model(**tiny.flux_inputs())
        art = aoti.compile(model, call, cache=aoti.Cache({str(cache_dir)!r}))
        status = aoti.apply(art, model)
        inputs = tiny.flux_inputs()
        with torch.no_grad():
            diff = (model(**inputs)[0] - model.forward.eager(**inputs)[0]).abs().max().item()
        print(json.dumps(dict(key=art.key, hit=status.cache_hit, runtime=status.runtime, diff=diff)))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    import json

    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["key"] == artifact.key and result["hit"] is True and result["runtime"] == "aoti"
    assert result["diff"] < 1e-4


def test_cuda_graphs_on_a_cpu_package_are_off_visibly(mlp_artifact):
    model, artifact = mlp_artifact
    status = aoti.apply(artifact, model, cuda_graphs=True)
    assert status.runtime == "aoti" and status.cuda_graphs == 0
    assert status.fallbacks == ["cuda graphs -> off: the graphs run on cpu"]
    x = torch.randn(4, 32)
    assert torch.allclose(model(x), model.forward.eager(x), atol=1e-5)
    aoti.restore(model)


def test_the_manifest_says_what_the_build_did_not_what_was_asked(mlp_artifact):
    """`one_pass_rows` (a CUDA-only Inductor pass, on by default) did not run in a CPU build."""
    _, artifact = mlp_artifact
    assert aoti.CompileOptions().one_pass_rows is True
    assert artifact.manifest["device"] == "cpu" and artifact.manifest["options"]["one_pass_rows"] is False


@pytest.mark.parametrize("strict", [False, True])
def test_a_compiled_model_is_freed_once_dropped(tmp_path, strict):
    """Nothing in the build keeps the model alive: torch's record of the last trace and Dynamo's
    installed graph globals referenced its weights, so an unloaded model kept its memory."""
    import gc
    import weakref

    model = tiny.llama() if strict else tiny.MLP()
    inputs = (tiny.token_ids(8),) if strict else (torch.randn(4, 32),)
    with aoti.capture(model) as call, torch.no_grad():
        model(*inputs)
    name, parameter = next(model.named_parameters())
    weight = weakref.ref(parameter)
    del parameter
    status = aoti.apply(aoti.compile(model, call, aoti.CompileOptions(strict=strict), cache=aoti.Cache(tmp_path)), model)
    assert status.runtime == "aoti"
    # Weights replaced after a build (fused, quantized) go at once, not when the cyclic collector runs.
    aoti.restore(model)
    owner, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(owner), leaf, torch.nn.Parameter(torch.zeros(1)))
    assert weight() is None
    weight = weakref.ref(next(model.parameters()))
    del model, call, status
    gc.collect()
    assert weight() is None


def test_load_by_ref_binds_a_fresh_copy_without_capture_or_build(flux_compiled, cache):
    """What a ZeroGPU worker does: another copy of the model, the package named by plain data."""
    _, artifact = flux_compiled
    ref = artifact.ref()
    assert ref == {"key": artifact.key, "transforms": []} and pickle.loads(pickle.dumps(ref)) == ref
    fresh = tiny.flux()  # same architecture and seed: the same weights
    with mock.patch("aoti.compile._build", side_effect=AssertionError("load must not build")), \
            mock.patch("aoti.capture", side_effect=AssertionError("load must not capture")):
        loaded = aoti.load(fresh, ref, cache=cache)
    assert loaded.key == artifact.key and loaded.status.cache_hit is True
    assert aoti.apply(loaded, fresh).runtime == "aoti"
    inputs = tiny.flux_inputs()
    with torch.no_grad():
        torch.testing.assert_close(fresh(**inputs)[0], fresh.forward.eager(**inputs)[0], rtol=1e-4, atol=1e-5)
    assert aoti.status_of(fresh).compiled_calls == 1
    aoti.restore(fresh)


def test_load_refuses_another_model_and_a_missing_package(flux_compiled, cache):
    _, artifact = flux_compiled
    with pytest.raises(ValueError, match="built for another model"):
        aoti.load(tiny.flux(num_layers=2), artifact.ref(), cache=cache)
    with pytest.raises(LookupError, match="not in"):
        aoti.load(tiny.flux(), {"key": "0" * 32}, cache=cache)


def test_an_input_in_another_layout_runs_compiled_on_a_copy_in_the_built_one(flux_compiled):
    """Same shape and dtype, other strides (the same values seen through a transpose): the graph reads
    its inputs with the strides it was built for, so the input is copied into them first."""
    model, _ = flux_compiled
    inputs = tiny.flux_inputs()
    inputs["hidden_states"] = inputs["hidden_states"].transpose(1, 2).contiguous().transpose(1, 2)
    inputs["pooled_projections"] = torch.randn(1, 1).expand(1, 32)  # stride 0: broadcast
    assert not inputs["hidden_states"].is_contiguous()
    status = aoti.status_of(model)
    calls, copies, fallbacks = status.compiled_calls, status.layout_copies, status.guard_fallbacks
    with torch.no_grad():
        out, ref = model(**inputs)[0], model.forward.eager(**inputs)[0]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert (status.compiled_calls, status.layout_copies, status.guard_fallbacks) == (calls + 1, copies + 2, fallbacks)


class _PlainTensorAttributes(torch.nn.Module):
    """Tensors kept as plain attributes, not buffers (as some diffusers rotary embeddings keep theirs):
    export lifts them as constants."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)
        self.table = torch.randn(6, 8)
        self.inner = torch.nn.Module()
        self.inner.freqs = torch.randn(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) * self.table + self.inner.freqs


@pytest.mark.probe  # the probe child binds random tensors of the recorded shapes to these attributes too
def test_plain_tensor_attributes_load_like_buffers(cache):
    torch.manual_seed(0)
    model = _PlainTensorAttributes().eval()
    with aoti.capture(model) as call, torch.no_grad():
        model(torch.randn(2, 6, 8))
    artifact = aoti.compile(model, call, cache=cache)
    status = aoti.apply(artifact, model)  # probes the package in a child process first
    assert status.runtime == "aoti", status.reason
    assert {"table", "inner.freqs"} <= set(artifact.manifest["graphs"][0]["constants"])
    x = torch.randn(2, 6, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward.eager(x))
    assert aoti.status_of(model).compiled_calls == 1


def test_a_build_tells_its_stages_and_a_rebuild_has_the_last_builds_time(tmp_path):
    """`on_stage` hears the lookup, then export and build for each graph; a cache hit hears only the
    lookup; the same package built again (evicted meanwhile) comes with the first build's time as its
    estimate."""
    cache = aoti.Cache(tmp_path)
    model = tiny.MLP()
    with aoti.capture(model) as call:
        model(torch.randn(4, 32))
    heard: list[tuple[str, float | None]] = []
    first = aoti.compile(model, call, cache=cache, on_stage=lambda stage, estimate: heard.append((stage, estimate)))
    lookup = ("plan the graphs and look up the cache", None)
    assert heard == [lookup, ("export graph 1 of 1", None), ("build graph 1 of 1 (Inductor, C++)", None)]
    heard.clear()
    aoti.compile(model, call, cache=cache, on_stage=lambda stage, estimate: heard.append((stage, estimate)))
    assert heard == [lookup]  # found in the cache: nothing to build
    heard.clear()
    cache.remove(first.key)
    aoti.compile(model, call, cache=cache, on_stage=lambda stage, estimate: heard.append((stage, estimate)))
    assert [stage for stage, _ in heard[1:]] == ["export graph 1 of 1", "build graph 1 of 1 (Inductor, C++)"]
    assert {estimate for _, estimate in heard[1:]} == {first.manifest["compile_s"]}


def test_the_compiled_graphs_are_timed_against_eager_on_the_modules_own_inputs(flux_compiled):
    """`measure_speedup`: eager and compiled alternate on the same call, warm-up apart; the figure is
    the median ratio with its middle half, and the requests' counters are left as they were."""
    import copy

    model, _ = flux_compiled
    before = copy.copy(aoti.status_of(model))
    speedup = aoti.measure_speedup(model, [aoti.CapturedCall((), tiny.flux_inputs())], budget_s=0.2)
    assert speedup is not None and speedup.rounds >= 5 and speedup.low <= speedup.ratio <= speedup.high
    assert speedup.eager_s > 0 and speedup.compiled_s > 0
    assert speedup.to_dict()["verdict"] == speedup.verdict
    after = aoti.status_of(model)
    assert (after.compiled_calls, after.guard_fallbacks) == (before.compiled_calls, before.guard_fallbacks)
    # A call the graphs were not built for would time eager against eager: no figure, rather than a wrong one.
    assert aoti.measure_speedup(model, [aoti.CapturedCall((), tiny.flux_inputs(img=20))], budget_s=0.05) is None
    assert aoti.status_of(model).guard_fallbacks == before.guard_fallbacks
    assert aoti.measure_speedup(torch.nn.Linear(2, 2), [aoti.CapturedCall((torch.ones(1, 2),), {})]) is None  # nothing compiled


def test_a_speedup_inside_its_spread_is_no_measurable_difference():
    def speedup(ratio, low, high):
        return aoti.Speedup(eager_s=ratio, compiled_s=1.0, ratio=ratio, low=low, high=high, rounds=9)

    assert speedup(2.8, 2.6, 3.0).verdict == "faster"
    assert speedup(0.6, 0.55, 0.7).verdict == "slower"
    assert speedup(1.04, 0.93, 1.12).verdict == "no measurable difference"
