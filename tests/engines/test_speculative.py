"""Speculative decoding: the acceptance rule keeps the target's distribution exactly; greedy text is
the target's own, eager and compiled; a model drafting for itself has every draft kept."""

import dataclasses

import pytest
import torch

import aoti
from engines import registry
from engines.speculative import Speculation, accept
from engines.text import SamplingParams, TextModel


def _distribution(vocab: int, generator: torch.Generator) -> torch.Tensor:
    return torch.softmax(torch.randn(vocab, generator=generator) * 2, -1)


def test_the_first_token_kept_or_resampled_follows_the_targets_distribution():
    """Drafts drawn from q, judged against p: the first token emitted is distributed as p[0], however
    far q is from it (20 000 draws, total variation under 0.02; q itself is 0.3+ away)."""
    g = torch.Generator().manual_seed(0)
    vocab, k, trials = 6, 3, 20_000
    p = torch.stack([_distribution(vocab, g) for _ in range(k + 1)])
    q = torch.stack([_distribution(vocab, g) for _ in range(k)])
    assert 0.5 * (p[0] - q[0]).abs().sum() > 0.3
    counts = torch.zeros(vocab)
    kept_total = 0
    for _ in range(trials):
        drafts = torch.stack([torch.multinomial(q[i], 1, generator=g)[0] for i in range(k)])
        kept, following = accept(drafts, p, q, g, greedy=False)
        first = int(drafts[0]) if kept > 0 else following
        counts[first] += 1
        kept_total += kept
    assert 0.5 * (counts / trials - p[0]).abs().sum() < 0.02
    assert 0 < kept_total < trials * k  # some kept, some rejected: both branches ran


def test_greedy_acceptance_keeps_drafts_while_they_are_the_targets_argmax():
    p = torch.eye(5)[[1, 2, 3, 4]]  # the target's argmax: 1, 2, 3, then 4
    assert accept(torch.tensor([1, 2, 0]), p, torch.zeros(3, 5), None, greedy=True) == (2, 3)
    assert accept(torch.tensor([1, 2, 3]), p, torch.zeros(3, 5), None, greedy=True) == (3, 4)  # all kept + bonus
    assert accept(torch.tensor([0, 2, 3]), p, torch.zeros(3, 5), None, greedy=True) == (0, 1)


@pytest.fixture(scope="module")
def target():
    return TextModel(registry.get("tiny-llama-pydoc"))


def _ids(model: TextModel, params: SamplingParams, prompt: str = "Return the number of",
         stats: Speculation | None = None) -> list[int]:
    """The token ids ``model`` decodes for ``prompt``; speculative ones count into ``stats`` when given."""
    ids = model.check_inputs(prompt, params)
    stream = model.decode_speculative(ids, params, Speculation() if stats is None else stats) if params.speculative else model.decode_tokens(ids, params)
    with torch.no_grad():
        return list(stream)


def test_greedy_speculative_text_is_the_targets_own_eager_and_compiled(target, cache):
    """The embedded model with its embedded draft: greedy token ids equal decoding without a draft, for
    several prompts and the whole length, eager and with both models compiled."""
    assert target.draft is not None and target.draft.spec.id == "tiny-llama-pydoc-draft"
    plain, fast = SamplingParams(max_new_tokens=60, temperature=0), SamplingParams(max_new_tokens=60, temperature=0, speculative=True)
    prompts = ["Return the number of", "If the file", "The socket module"]
    expected = [_ids(target, plain, p) for p in prompts]
    assert [_ids(target, fast, p) for p in prompts] == expected
    status = target.optimize(cache=cache)
    assert status.runtime == "aoti" and aoti_status(target.draft) == "aoti" and "draft" in target.ref
    # the verify step has a static graph of its own (a CUDA graph on a GPU): one token, k + 1, and the prefill range
    assert target.verify_length == target.spec.draft_tokens + 1 and status.graphs == 3
    assert [_ids(target, fast, p) for p in prompts] == expected
    assert aoti.status_of(target.hot_module).guard_fallbacks == 0
    stats = Speculation()
    _ids(target, fast, prompts[0], stats)
    assert stats.drafted > 0 and 0 < stats.accepted <= stats.drafted


def aoti_status(model: TextModel) -> str:
    return aoti.status_of(model.hot_module).runtime


def test_a_model_drafting_for_itself_has_every_draft_kept_when_sampling():
    """Draft == target: p == q, so every draft is kept (the sampling path end to end); the text streams
    through `generate` with the counts."""
    spec = registry.get("tiny-llama-pydoc")
    model = TextModel(spec, draft=TextModel(spec))
    params = SamplingParams(max_new_tokens=40, temperature=0.8, top_k=0, top_p=1.0, seed=3, ignore_eos=True, speculative=True)
    steps = list(model.generate("If the file", params))
    last = steps[-1]
    assert last.tokens == 40 and last.drafted >= 30 and last.accepted == last.drafted


def test_a_draft_left_out_for_memory_is_said_when_speculation_is_asked_for():
    model = TextModel(registry.get("tiny-llama-pydoc"), without_draft="fits without its draft (speculative decoding off)")
    assert model.draft is None
    with pytest.raises(ValueError, match="its draft tiny-llama-pydoc-draft is not loaded: fits without its draft"):
        list(model.generate("If the file", SamplingParams(max_new_tokens=4, temperature=0, speculative=True)))


def test_speculative_decoding_is_refused_for_a_model_without_a_draft():
    from engines.text import check_text_request

    with pytest.raises(ValueError, match="needs a draft model"):
        check_text_request(registry.get("qwen2.5-0.5b-instruct"), "hi", SamplingParams(speculative=True))


def test_every_draft_in_the_catalog_is_a_text_model_that_holds_its_models_cache():
    drafted = [spec for spec in registry.CATALOG if spec.draft]
    assert {spec.id for spec in drafted} >= {"tiny-llama-pydoc", "qwen2.5-7b-instruct"}
    for spec in drafted:
        draft = registry.draft(spec.draft)
        assert draft.task == spec.task == "text" and not draft.draft
        assert draft.max_prompt_tokens >= spec.max_prompt_tokens and draft.max_new_tokens >= spec.max_new_tokens
    assert not {d.id for d in registry.DRAFTS} & {s.id for s in registry.CATALOG}  # drafts are not offered on their own


def test_a_target_token_past_the_drafts_vocabulary_does_not_stop_decoding():
    """Qwen2.5-7B pads its vocabulary to 152064 rows, its 0.5B draft has 151936: a target token the draft
    cannot read (here every token: the target's head only scores ids past the draft's vocabulary) must
    not reach the draft's embedding, and the text stays the target's own."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    from engines.registry import ASSETS, ModelSpec

    def build(vocab: int) -> torch.nn.Module:
        config = Qwen2Config(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
                             num_hidden_layers=1, vocab_size=vocab, max_position_embeddings=256, tie_word_embeddings=False)
        return AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)

    torch.manual_seed(0)
    target_model, draft_model = build(2048 + 64), build(2048)
    target_model.model.norm.weight.zero_()[0] = 1  # the last hidden state keeps one coordinate
    target_model.lm_head.weight.zero_()[2050, 0], target_model.lm_head.weight[2051, 0] = 1, -1  # argmax: 2050 or 2051
    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "tiny-llama-pydoc")

    def spec(name: str, draft: str = "") -> ModelSpec:
        return ModelSpec(id=name, task="text", source="random-weights", params_b=0, dtype="float32", compile_module="decoder",
                         max_new_tokens=24, max_prompt_tokens=32, draft=draft, draft_tokens=3)

    draft = TextModel(spec("draft"), model=draft_model, tokenizer=tokenizer)
    target = TextModel(spec("target", "draft"), model=target_model, tokenizer=tokenizer, draft=draft)
    assert target.vocab_size == 2112 and draft.vocab_size == 2048
    params = SamplingParams(max_new_tokens=24, temperature=0, ignore_eos=True)
    plain = _ids(target, params)
    assert set(plain) <= {2050, 2051}
    stats = Speculation()
    assert _ids(target, dataclasses.replace(params, speculative=True), stats=stats) == plain
    assert stats.rounds > 0


def test_the_bonus_token_after_every_draft_is_kept_follows_the_targets_next_distribution():
    """When the target keeps all k drafts, the token it adds is drawn from its distribution one past
    the last draft (p[k]), whatever q was: over the rounds that kept everything, the bonus tokens'
    frequencies match p[k] (total variation under 0.03; q[0] is 0.15+ from p[0], p[k] is 0.3+ from a
    uniform draw, so a wrong row would show)."""
    g = torch.Generator().manual_seed(1)
    vocab, k, trials = 6, 2, 30_000
    p = torch.stack([_distribution(vocab, g) for _ in range(k + 1)])
    q = 0.6 * p[:k] + 0.4 * torch.stack([_distribution(vocab, g) for _ in range(k)])
    assert 0.5 * (p[0] - q[0]).abs().sum() > 0.15 and 0.5 * (p[k] - 1 / vocab).abs().sum() > 0.3
    bonus, rounds = torch.zeros(vocab), 0
    for _ in range(trials):
        drafts = torch.stack([torch.multinomial(q[i], 1, generator=g)[0] for i in range(k)])
        kept, following = accept(drafts, p, q, g, greedy=False)
        if kept == k:
            bonus[following] += 1
            rounds += 1
    assert rounds > trials // 4  # the branch ran often enough to measure
    assert 0.5 * (bonus / rounds - p[k]).abs().sum() < 0.03
