import re

import pytest
import torch

import aoti
from engines.text import SamplingParams, TextModel, prefill_buckets, sample_next

GREEDY = SamplingParams(max_new_tokens=40, temperature=0)


@pytest.fixture(scope="module")
def text_model(engine, text_spec):
    model = engine.load(text_spec)
    assert isinstance(model, TextModel)
    return model


def test_embedded_text_model_writes_words(text_model):
    text_model.restore()
    steps = list(text_model.generate("If the file", GREEDY))
    assert len(steps) >= 10 and steps[-1].ttft_s is not None
    words = re.findall(r"[A-Za-z]{2,}", steps[-1].text)
    assert len(words) >= 6, steps[-1].text  # English-like words, not byte soup
    assert [s.tokens for s in steps] == list(range(1, len(steps) + 1))  # streamed one token at a time


def test_aoti_decode_loop_gives_the_same_greedy_tokens_as_eager(engine, text_model, text_spec, monkeypatch):
    monkeypatch.setattr(text_model, "pad_prompts", True)  # as on a GPU: padded prompts, warmed buckets
    text_model.restore()
    prompts = ["Return the number of", "The socket module", "If the file"]
    eager = [list(text_model.generate(p, GREEDY))[-1].text for p in prompts]
    state = engine.optimize(text_spec.id, background=False)
    assert state.phase == "aoti", state.reason
    warmed = aoti.status_of(text_model.decoder).compiled_calls
    verify = 1 if text_model.draft is not None else 0  # speculative decoding's verify length
    assert warmed == len(prefill_buckets(text_model.spec.max_prompt_tokens)) + verify + 1  # every prefill bucket and the decode step, compiled
    compiled = [list(text_model.generate(p, GREEDY))[-1].text for p in prompts]
    assert compiled == eager
    live = aoti.status_of(text_model.decoder)
    assert live.guard_fallbacks == 0 and live.compiled_calls >= 3 * 2  # prefill and decode both compiled
    assert live.graphs == 2 + verify  # the one-token step, the prefill range and, with a draft, the verify length


def test_sampling_is_reproducible_with_a_seed_and_respects_top_k():
    logits = torch.randn(100)
    params = SamplingParams(temperature=1.0, top_k=3, top_p=1.0, seed=0)
    picks = {int(sample_next(logits, params, torch.Generator().manual_seed(i))) for i in range(50)}
    assert picks <= set(logits.topk(3).indices.tolist())
    a = sample_next(logits, params, torch.Generator().manual_seed(7))
    b = sample_next(logits, params, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize(("prompt", "params", "message"), [
    ("", GREEDY, "empty"),
    ("hi", SamplingParams(max_new_tokens=0), "max_new_tokens"),
    ("hi", SamplingParams(temperature=5), "temperature"),
    ("word " * 400, GREEDY, "at most"),
])
def test_bad_inputs_raise_clear_errors(text_model, prompt, params, message):
    with pytest.raises(ValueError, match=message):
        list(text_model.generate(prompt, params))


def test_queueing_the_next_step_ahead_changes_no_token(text_model):
    """The GPU loop queues step n+1 before reading token n: same tokens, same count, same seeded
    samples, and the raw token stream is exactly as long as asked for."""
    text_model.restore()
    cases = [("If the file", GREEDY), ("The socket module", SamplingParams(max_new_tokens=25, temperature=0.9, seed=3))]
    ids = text_model.tokenizer("word " * 60, return_tensors="pt").input_ids
    cap = SamplingParams(max_new_tokens=text_model.spec.max_new_tokens, temperature=0)
    try:
        results = {}
        for ahead in (False, True):
            text_model.queue_ahead = ahead
            results[ahead] = [[s.text for s in text_model.generate(p, params)] for p, params in cases]
            results[ahead].append(list(text_model.decode_tokens(ids, cap)))
    finally:
        text_model.queue_ahead = False
    assert results[True] == results[False]
    assert len(results[True][2]) == cap.max_new_tokens


def test_decode_steps_pass_their_position_16_byte_aligned(text_model):
    """AOTInductor copies an input that is not 16-byte aligned, warning on every call (seen on an H200 at
    every odd position): each decode step's one-element cache position is aligned and holds its position."""
    text_model.restore()
    seen = []

    def record(module, args, kwargs):
        position = kwargs["cache_position"]
        seen.append((position.numel(), position.data_ptr() % 16, position.tolist()))

    hook = text_model.decoder.register_forward_pre_hook(record, with_kwargs=True)
    try:
        ids = text_model.check_inputs("If the file", GREEDY)
        list(text_model.decode_tokens(ids, SamplingParams(max_new_tokens=6, temperature=0)))
    finally:
        hook.remove()
    length = ids.shape[1]
    assert seen[0] == (length, 0, list(range(length)))  # the prefill
    assert seen[1:] == [(1, 0, [length + i]) for i in range(5)]  # 5 steps after the prefill's token


def test_padding_prompts_to_buckets_changes_no_logit_and_no_token(text_model, monkeypatch):
    """Prompts are right-padded to a bucket length (on GPUs); the first token's logits and the greedy
    tokens equal an unpadded run of the same decoder."""
    assert not text_model.pad_prompts and text_model.prefill_length(5) == 5  # the CPU runs prompts as they are
    monkeypatch.setattr(text_model, "pad_prompts", True)
    text_model.restore()
    assert prefill_buckets(text_model.spec.max_prompt_tokens)[-1] == text_model.spec.max_prompt_tokens
    decoder, positions = text_model.decoder, torch.arange(text_model.max_cache_len)
    for prompt in ["If the file", "Return the number of lines in " * 3]:
        ids = text_model.check_inputs(prompt, GREEDY)
        length = ids.shape[1]
        assert text_model.prefill_length(length) > length  # really padded
        with torch.no_grad():
            logits = decoder(input_ids=ids, cache_position=positions[:length])[0, -1]
            reference, token = [], logits.argmax()
            for i in range(12):
                reference.append(int(token))
                token = decoder(input_ids=token.view(1, 1), cache_position=positions[length + i : length + i + 1])[0, -1].argmax()
            padded = torch.nn.functional.pad(ids, (0, text_model.prefill_length(length) - length))
            padded_logits = decoder(input_ids=padded, cache_position=positions[: padded.shape[1]])[0, length - 1]
        torch.testing.assert_close(padded_logits, logits, rtol=1e-4, atol=1e-4)
        assert list(text_model.decode_tokens(ids, SamplingParams(max_new_tokens=12, temperature=0))) == reference
