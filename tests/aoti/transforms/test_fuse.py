import pytest
import torch

import aoti
from aoti.transforms.fuse import ProjectionSlice, fuse_projections, fused_groups, unfuse_projections
from tests import tiny


@pytest.mark.parametrize("build", [tiny.qwen2, tiny.llama], ids=["qwen2", "llama"])
def test_fused_projections_give_the_logits_of_the_separate_ones(build):
    model = build()
    ids = tiny.token_ids(12)
    with torch.no_grad():
        before = model(ids).logits
    params_before = sum(p.numel() for p in model.parameters())
    assert fuse_projections(model) == 2 * 2 and fused_groups(model) == 4  # q/k/v and gate/up, 2 layers
    layer = model.model.layers[0]
    assert isinstance(layer.self_attn.k_proj, ProjectionSlice) and isinstance(layer.mlp.up_proj, ProjectionSlice)
    assert layer.self_attn.qkv_proj.out_features == sum(
        getattr(layer.self_attn, n).out_features for n in ("q_proj", "k_proj", "v_proj"))
    assert sum(p.numel() for p in model.parameters()) == params_before  # the old weights are gone, none copied
    assert "model.layers.0.mlp.gate_up_proj.weight" in model.state_dict()
    with torch.no_grad():
        after = model(ids).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert fuse_projections(model) == 0  # already fused


def test_a_slice_called_on_another_input_projects_that_input():
    model = tiny.qwen2()
    attention = model.model.layers[0].self_attn
    separate = {n: torch.nn.Linear(64, getattr(attention, n).out_features) for n in ("q_proj", "k_proj", "v_proj")}
    for name, layer in separate.items():
        layer.load_state_dict(getattr(attention, name).state_dict())
    fuse_projections(model)
    a, b = torch.randn(3, 64), torch.randn(3, 64)
    with torch.no_grad():
        got = [attention.q_proj(a), attention.k_proj(b), attention.v_proj(a), attention.q_proj(a), attention.q_proj(b)]
        want = [separate["q_proj"](a), separate["k_proj"](b), separate["v_proj"](a), separate["q_proj"](a), separate["q_proj"](b)]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_unfusing_gives_back_separate_layers_with_the_same_weights():
    model = tiny.qwen2()
    weight = model.model.layers[1].self_attn.v_proj.weight.detach().clone()
    ids = tiny.token_ids(9)
    with torch.no_grad():
        before = model(ids).logits
    fuse_projections(model)
    assert unfuse_projections(model) == 4 and fused_groups(model) == 0
    v_proj = model.model.layers[1].self_attn.v_proj
    assert type(v_proj) is torch.nn.Linear and torch.equal(v_proj.weight, weight)
    assert "qkv_proj" not in model.model.layers[1].self_attn._modules
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before, rtol=1e-5, atol=1e-5)


def test_int8_after_fused_projections_is_refused_with_what_to_do():
    model = tiny.qwen2()
    aoti.transform(model, [aoti.FuseProjections()])
    with pytest.raises(ValueError, match="without FuseProjections"):
        aoti.transform(model, [aoti.Int8WeightOnly()])
    assert aoti.transforms_of(model) == (aoti.FuseProjections(),)  # left as it was


def test_fp8_quantizes_the_fused_layer_like_the_separate_ones():
    separate, fused = tiny.qwen2(), tiny.qwen2()
    fuse_projections(fused)
    for model in (separate, fused):
        aoti.transform(model, [aoti.Float8Rowwise(emulate=True)])
    assert type(fused.model.layers[0].mlp.gate_up_proj).__name__ == "RowwiseFloat8Linear"
    ids = tiny.token_ids(7)
    with torch.no_grad():  # rows are scaled one by one: concatenating them changes no number
        torch.testing.assert_close(fused(ids).logits, separate(ids).logits, rtol=1e-5, atol=1e-5)


def test_a_layer_whose_weights_its_parent_reads_is_left_unfused():
    """diffusers' HunyuanDiT attention pooling hands q/k/v's weights to F.multi_head_attention_forward
    itself: fused, its slices have no weights and the model broke (AttributeError)."""
    from diffusers.models.embeddings import HunyuanDiTAttentionPool

    torch.manual_seed(0)
    pool = HunyuanDiTAttentionPool(spacial_dim=6, embed_dim=16, num_heads=2, output_dim=8).eval()
    x = torch.randn(1, 6, 16)
    with torch.no_grad():
        before = pool(x)
    assert fuse_projections(pool) == 0 and fused_groups(pool) == 0
    with torch.no_grad():
        assert torch.equal(pool(x), before)
    llama = tiny.llama()
    assert fuse_projections(llama) > 0  # layers that are only called are still fused
