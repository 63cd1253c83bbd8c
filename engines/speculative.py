"""Speculative decoding: a small draft model proposes ``k`` tokens one at a time, the target checks all
of them in one forward over ``k + 1`` positions, and keeps the longest prefix it agrees with plus one
token of its own. Greedy output is the target's own, up to floating-point rounding: on a GPU the
verify step reads k + 1 tokens in one product, which rounds differently from k + 1 one-token steps, so
in bf16 a near-tie can flip (exactly equal in fp32 on the CPU, tested). Sampled output has the
target's distribution exactly (Leviathan et al. 2023, "Fast Inference from Transformers via
Speculative Decoding"):

- draft token ``d`` drawn from ``q`` is kept with probability ``min(1, p(d) / q(d))``;
- at the first rejection the token is drawn from ``max(0, p - q)`` renormalized;
- when every draft is kept, one more token is drawn from the target's next distribution ("bonus").

The target's vocabulary may be padded wider than the draft's (Qwen2.5-7B: 152064 rows, its 0.5B draft:
151936). A target token the draft cannot read goes into the draft's cache as token 0: its proposals
get worse for a while, the output does not change (the target judges every draft).

Both models keep static KV caches. A rejected draft's cache slots need no undo: every later step
writes its own positions and attends only up to them (the causal mask), so stale slots are never read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch


class StaticCacheLM(Protocol):
    """What speculative decoding needs of a model (`engines.text.TextModel` is one)."""

    decoder: torch.nn.Module  # (input_ids, cache_position) -> logits, on a static KV cache
    max_cache_len: int

    @property
    def vocab_size(self) -> int: ...  # the rows of its embedding: the token ids it can read

    @property
    def device(self) -> str: ...

    def prefill_length(self, length: int) -> int: ...


@dataclass
class Speculation:
    """A request's running counts: draft tokens proposed, and how many the target kept."""

    drafted: int = 0
    accepted: int = 0
    rounds: int = 0

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None


def accept(drafts: torch.Tensor, p: torch.Tensor, q: torch.Tensor, generator: torch.Generator | None,
           greedy: bool) -> tuple[int, int]:
    """How many of ``drafts`` (k,) the target keeps, and the token that follows them.

    ``p`` (k + 1, vocab): the target's distributions at each draft's position and one past the last;
    ``q`` (k, vocab): the draft's distributions the drafts were drawn from. Greedy: a draft is kept
    while it is the target's argmax, and the next token is the target's argmax where they part."""
    k = drafts.shape[0]
    if greedy:
        best = p.argmax(-1)
        kept = int((drafts == best[:k]).cumprod(0).sum())  # the agreeing prefix's length
        return kept, int(best[kept])
    rows = torch.arange(k, device=p.device)
    ratio = p[rows, drafts] / q[rows, drafts].clamp_min(1e-20)
    coins = torch.rand(k, generator=generator, device=p.device)
    rejected = (coins >= ratio).nonzero()
    kept = int(rejected[0]) if rejected.numel() else k
    if kept == k:
        return k, int(torch.multinomial(p[k], 1, generator=generator))
    residual = (p[kept] - q[kept]).clamp_min(0)
    total = residual.sum()
    if total <= 0:  # p == q there: any draw from p is exact
        residual, total = p[kept], p[kept].sum()
    return kept, int(torch.multinomial(residual / total, 1, generator=generator))


def decode(target: StaticCacheLM, draft: StaticCacheLM, ids: torch.Tensor, max_new_tokens: int, k: int,
           distribution: Callable[[torch.Tensor], torch.Tensor] | None, generator: torch.Generator | None,
           stats: Speculation) -> Iterator[int]:
    """Prefill ``ids`` on both models, then yield up to ``max_new_tokens`` token ids, ``k`` drafted and
    verified at a time (fewer near the end of the cache). ``distribution`` maps a row of logits to the
    probabilities a token is sampled from (temperature, top-k, top-p); None is greedy. ``stats``
    counts as it goes."""
    device = target.device
    greedy = distribution is None
    readable = draft.vocab_size  # target tokens at or past it reach the draft as token 0
    length = ids.shape[1]
    positions = torch.arange(target.max_cache_len, device=device)

    def probs(logits: torch.Tensor) -> torch.Tensor:  # greedy needs the argmax alone: the logits do
        return logits if distribution is None else distribution(logits)

    for model in (target, draft):  # each pads the prompt to its own bucket (on a GPU): pads are masked out
        padded = torch.nn.functional.pad(ids, (0, model.prefill_length(length) - length))
        logits = model.decoder(input_ids=padded, cache_position=positions[: padded.shape[1]])
        if model is target:
            first = probs(logits[0, length - 1])
    token = int(first.argmax()) if greedy else int(torch.multinomial(first, 1, generator=generator))
    count = min(max_new_tokens, target.max_cache_len - length + 1)
    yield token
    made, pos = 1, length  # ``token`` goes to cache position ``pos`` next
    behind: int | None = None  # a kept draft the draft model has not fed yet (every draft was kept)
    while made < count:
        span = max(0, min(k, count - made, target.max_cache_len - 1 - pos))  # 0 at the cache's end: a plain step
        if behind is not None:  # the last round kept every draft: the draft model catches up first
            draft.decoder(input_ids=torch.tensor([[behind]], device=device), cache_position=positions[pos - 1 : pos])
        # The drafts stay on the device until the target has judged them: no read-back per drafted token.
        drafted, q_rows = [torch.tensor([token], device=device)], []
        last = drafted[0] if token < readable else torch.zeros(1, dtype=torch.long, device=device)
        for j in range(span):
            logits = draft.decoder(input_ids=last.view(1, 1), cache_position=positions[pos + j : pos + j + 1])
            q = probs(logits[0, -1])
            last = q.argmax(-1, keepdim=True) if greedy else torch.multinomial(q, 1, generator=generator)
            drafted.append(last)
            q_rows.append(q)
        block = torch.cat(drafted).view(1, -1)  # the token, then the drafts
        logits = target.decoder(input_ids=block, cache_position=positions[pos : pos + span + 1])
        p = torch.stack([probs(row) for row in logits[0]])
        q = torch.stack(q_rows) if q_rows else p[:0]
        if q.shape[-1] < p.shape[-1]:  # the draft's vocabulary may stop short of the target's padded one
            q = torch.nn.functional.pad(q, (0, p.shape[-1] - q.shape[-1]))
        kept, following = accept(block[0, 1:], p, q, generator, greedy)
        drafts = block[0, 1:].tolist()
        stats.drafted, stats.accepted, stats.rounds = stats.drafted + span, stats.accepted + kept, stats.rounds + 1
        for emitted in [*drafts[:kept], following]:
            if made >= count:
                return
            made += 1
            yield emitted
        behind = drafts[-1] if drafts and kept == span else None
        token, pos = following, pos + kept + 1
