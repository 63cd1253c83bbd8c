"""aoti.integrations.transformers: decoder layers whose one-token step runs as fused one-row products
(norms, residual adds and SiLU·mul inside `aoti.kernels.gemv`; the `FuseDecoderLayers` transform). The
fused step runs the kernel, so it is checked in Triton's CPU interpreter, against the same model
unfused; on a GPU it is compiled into the text engine's decode graph."""

from __future__ import annotations

import textwrap

import pytest
import torch

import aoti
from aoti.integrations.transformers import FusedDecoderLayer, fuse_layers, fused_layers
from aoti.transforms.fuse import fuse_projections
from tests import tiny
from tests.interpreted import needs_triton, run_interpreted


@pytest.mark.parametrize("build", [tiny.qwen2, tiny.llama], ids=["qwen2", "llama"])
def test_fusing_projections_fuses_known_layers_and_unfusing_restores_them(build):
    model = build()
    layer_class = type(model.model.layers[0])
    ids = tiny.token_ids(5)
    with torch.no_grad():
        before = model(ids).logits
    aoti.transform(model, [aoti.FuseProjections(), aoti.FuseDecoderLayers()])
    assert fused_layers(model) == 2 and isinstance(model.model.layers[1], layer_class | FusedDecoderLayer)
    with torch.no_grad():  # kernels off (not routed; and several rows): the layer's own forward
        torch.testing.assert_close(model(ids).logits, before, rtol=1e-5, atol=1e-5)
    aoti.restore(model)
    assert fused_layers(model) == 0 and type(model.model.layers[0]) is layer_class
    assert "qkv_proj" not in model.model.layers[0].self_attn._modules


def test_layers_of_other_shapes_are_left_alone():
    model = tiny.qwen2()
    model.model.layers[0].mlp.act_fn = torch.nn.GELU()  # not a SiLU-gated MLP
    fuse_projections(model)
    assert fuse_layers(model) == 1 and fused_layers(model) == 1 and not isinstance(model.model.layers[0], FusedDecoderLayer)


FUSED_STEP = textwrap.dedent("""
    import copy, torch
    import aoti
    import aoti.integrations.transformers as fuse_layers
    from aoti.transforms.decode import use_gemv
    from tests import tiny

    calls = []
    plain_gemv = fuse_layers.gemv
    fuse_layers.gemv = lambda *args, **kwargs: calls.append(kwargs) or plain_gemv(*args, **kwargs)

    for build in (tiny.qwen2, tiny.llama):
        reference = build()
        model = copy.deepcopy(reference)  # (tiny.llama turns the KV cache off by default: generate turns it on)
        assert aoti.transform(model, [aoti.FuseProjections(), aoti.OneRowKernels(), aoti.FuseDecoderLayers()]) == []
        ids = tiny.token_ids(6)
        with torch.no_grad():
            want = reference.generate(ids, max_new_tokens=3, do_sample=False, use_cache=True, output_logits=True, return_dict_in_generate=True)
            calls.clear()
            got = model.generate(ids, max_new_tokens=3, do_sample=False, use_cache=True, output_logits=True, return_dict_in_generate=True)
        # Two one-token steps through both layers: gate/up with the norm and SiLU·mul, down with the residual.
        assert len(calls) == 2 * 2 * 2, len(calls)
        assert {tuple(sorted(c)) for c in calls} == {("eps", "glu", "norm_weight"), ("residual",)}, calls
        assert torch.equal(got.sequences, want.sequences)
        for step_got, step_want in zip(got.logits, want.logits):
            torch.testing.assert_close(step_got, step_want, rtol=1e-4, atol=1e-4)
        layer = model.model.layers[0]
        assert layer.self_attn.qkv_proj.fusion == {} and layer.self_attn.o_proj.fusion == {}

    # FP8 weights (row scales, interleaved gate/up rows): the fused step against the same FP8 model whose
    # layers run their own forward, each projection on the kernel alone (weight-only in both).
    fused = tiny.qwen2()
    aoti.transform(fused, [aoti.FuseProjections(), aoti.Float8Rowwise(emulate=True)])
    plain = copy.deepcopy(fused)
    fuse_layers.fuse_layers(fused)
    for model in (fused, plain):
        use_gemv(model)
    ids = tiny.token_ids(6)
    kwargs = dict(max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        want, calls[:] = plain.generate(ids, **kwargs), []
        got = fused.generate(ids, **kwargs)
    assert len(calls) == 2 * 2 * 2 and torch.equal(got.sequences, want.sequences)
    for step_got, step_want in zip(got.logits[1:], want.logits[1:]):  # the one-token steps
        torch.testing.assert_close(step_got, step_want, rtol=1e-4, atol=1e-4)
    print("ok")
""")


@needs_triton
def test_the_fused_one_token_step_gives_the_layers_logits_in_the_interpreter():
    assert run_interpreted(FUSED_STEP).endswith("ok")
