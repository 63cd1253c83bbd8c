import torch

from aoti.integrations.transformers import ATTENTION, use_gqa_decode_attention
from tests import tiny


def static_cache_decoder(attention: str):
    """A tiny Qwen2 (4 query heads, 2 KV heads) on transformers' static-cache export wrapper."""
    model = tiny.qwen2()
    if attention == ATTENTION:
        assert use_gqa_decode_attention(model)
    assert model.config._attn_implementation == attention
    return tiny.static_cache_decoder(model)


def run(decoder, ids: torch.Tensor) -> list[torch.Tensor]:
    """A prefill of all but the last two tokens, then one decode step for each of those."""
    n = ids.shape[1] - 2
    with torch.no_grad():
        outs = [decoder(input_ids=ids[:, :n], cache_position=torch.arange(n)).clone()]
        for i in (n, n + 1):
            outs.append(decoder(input_ids=ids[:, i : i + 1], cache_position=torch.arange(i, i + 1)).clone())
    return outs


def test_folded_decode_attention_gives_sdpa_logits():
    ids = torch.randint(0, 128, (1, 11))
    for got, want in zip(run(static_cache_decoder(ATTENTION), ids), run(static_cache_decoder("sdpa"), ids)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_exported_decode_step_attends_on_the_kv_heads_without_copying_the_cache():
    def exported_attention(attention: str):
        decoder = static_cache_decoder(attention)
        step = dict(input_ids=torch.zeros(1, 1, dtype=torch.long), cache_position=torch.tensor([3]))
        graph = torch.export.export(decoder, (), step, strict=True).graph
        calls = [n for n in graph.nodes if "scaled_dot_product" in str(n.target)]
        expands = sum("expand" in str(n.target) for n in graph.nodes)
        return [tuple(n.args[1].meta["val"].shape) for n in calls], expands

    folded, folded_expands = exported_attention(ATTENTION)
    repeated, repeated_expands = exported_attention("sdpa")
    assert folded == [(1, 2, 32, 16)] * 2  # keys stay on the 2 KV heads
    assert repeated == [(1, 4, 32, 16)] * 2  # transformers' SDPA repeats them for the 4 query heads
    assert folded_expands == repeated_expands - 2 * 2  # no key/value expand in either layer


def test_other_attention_implementations_are_left_alone():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager")
    model = LlamaForCausalLM(config)
    assert not use_gqa_decode_attention(model) and model.config._attn_implementation == "eager"
