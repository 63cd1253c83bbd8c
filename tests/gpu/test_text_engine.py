"""The text engine on a GPU with the recipe it runs there: FP8 on, off and on again on one loaded model
(the embedded Llama, whose LM head is tied to its embedding), compiled with the decode kernels and
replayed as CUDA graphs; off gives the bf16 outputs back exactly, on again the same FP8 ones."""

from __future__ import annotations

import torch

import aoti
from engines import registry
from engines.recipes import text_recipe
from engines.text import SamplingParams, TextModel


def test_fp8_on_off_on_on_one_loaded_model_gives_the_bf16_outputs_back(cache):
    text = TextModel(registry.get("tiny-llama-pydoc"), "cuda")
    weights: dict[str, torch.Tensor] = {}
    ids = torch.tensor([[3, 9, 27, 81, 5]], device="cuda")

    def logits() -> torch.Tensor:
        with torch.no_grad():
            return text.decoder(input_ids=ids, cache_position=torch.arange(5, device="cuda")).clone()

    outputs, texts = {}, {}
    for round_, fp8 in enumerate([False, True, False, True]):
        status = text.optimize(text_recipe(fp8=fp8, decode_kernels=True, preset="decode"), cache)
        assert status.runtime == "aoti" and status.quantization == ("fp8_rowwise" if fp8 else "none"), status
        static = 2 if text.draft is not None else 1  # the one-token decode step, and speculation's verify step
        assert status.cuda_graphs == static and not status.fallbacks, status.fallbacks
        out = logits()
        said = list(text.generate("def read(path):", SamplingParams(max_new_tokens=12, temperature=0)))[-1].text
        if round_ < 2:
            outputs[fp8], texts[fp8] = out, said
        else:  # the same package again (a cache hit), the same numbers
            assert status.cache_hit and torch.equal(out, outputs[fp8]) and said == texts[fp8]
        if not fp8:  # bf16 weights back bit for bit after FP8
            weights = weights or {n: t.clone() for n, t in text.decoder.state_dict().items()}
            assert all(torch.equal(t, weights[n]) for n, t in text.decoder.state_dict().items())
    assert not torch.equal(outputs[False], outputs[True])
    text.restore()
    assert aoti.transforms_of(text.decoder) == ()
