"""Text generation: a causal LM on a static KV cache, driven by our own decode loop (gpt-fast style).

The hot module is transformers' export wrapper around the model and its `StaticCache`
(`TorchExportableModuleWithStaticCache`): ``decoder(input_ids, cache_position) -> logits``. One AOTI
package holds a prefill graph (dynamic prompt length) and a decode graph (length 1); both alias the
model's weights and the same KV-cache buffers.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import aoti
from aoti import module_device
from aoti.integrations.transformers import use_gqa_decode_attention

from . import registry, speculative
from .adapters import AdapterSlot, check_adapter_request
from .device import on_zerogpu
from .optimize import bind_module, module_storages, optimize_module
from .recipes import Recipe, text_recipe
from .registry import ModelSpec
from .speculative import Speculation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.8  # 0 = greedy
    top_p: float = 0.95
    top_k: int = 50
    seed: int | None = None
    ignore_eos: bool = False  # always generate max_new_tokens (benchmarks)
    speculative: bool = False  # draft tokens with the model's draft and verify them (`engines.speculative`)
    lora: str = ""  # an adapter of `registry.adapters_for` the model ("": none), fused into its weights
    lora_scale: float = 1.0


@dataclass
class TextStep:
    """What the generator yields: the text so far and running measurements."""

    text: str
    tokens: int
    ttft_s: float | None
    elapsed_s: float
    drafted: int = 0  # speculative decoding: tokens the draft proposed so far,
    accepted: int = 0  # and how many of them the target kept
    lora_switch_s: float = 0.0  # seconds spent fusing (or unfusing) the asked adapter first (0: it was in place)

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens per second after the first token (None until there is a second one)."""
        decode_s = self.elapsed_s - (self.ttft_s or 0.0)
        return (self.tokens - 1) / decode_s if self.tokens > 1 and decode_s > 0 else None


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Greedy for temperature 0, else temperature + top-k + top-p sampling. ``logits``: (vocab,)."""
    if params.temperature <= 0:
        return logits.argmax(-1, keepdim=True)
    return torch.multinomial(token_probabilities(logits, params), 1, generator=generator)


def token_probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution a token is sampled from: ``logits`` (vocab,) through temperature, top-k and top-p."""
    logits = logits.float() / params.temperature
    if params.top_k > 0:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1])).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, -1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs > params.top_p
        sorted_probs[drop] = 0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum()
    return probs


def read_later(token: torch.Tensor) -> Callable[[], int]:
    """Start copying a one-element device tensor to the host; the returned function waits for that
    copy alone, not for work queued on the stream after it."""
    if token.device.type != "cuda":
        return lambda: int(token.item())
    host = torch.empty(token.shape, dtype=token.dtype, pin_memory=True)
    host.copy_(token, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()

    def read() -> int:
        copied.synchronize()
        return int(host.item())

    return read


TEMPERATURE_MAX = 2.0


def check_text_request(spec: ModelSpec, prompt: str, params: SamplingParams) -> None:
    """What any text model checks before it runs (the prompt's length in tokens aside): a ValueError a
    user can act on."""
    if not prompt or not prompt.strip():
        raise ValueError("`prompt` is empty: type some text to continue.")
    if not 1 <= params.max_new_tokens <= spec.max_new_tokens:
        raise ValueError(f"`max_new_tokens` must be between 1 and {spec.max_new_tokens}, got {params.max_new_tokens}.")
    if not 0 <= params.temperature <= TEMPERATURE_MAX:
        raise ValueError(f"`temperature` must be between 0 and {TEMPERATURE_MAX:g}, got {params.temperature}.")
    if not 0 < params.top_p <= 1:
        raise ValueError(f"`top_p` must be in (0, 1], got {params.top_p}.")
    if params.speculative and not spec.draft:
        raise ValueError(f"`speculative` decoding needs a draft model; {spec.id} has none.")
    check_adapter_request(spec.id, params.lora, params.lora_scale)


def read_peft_adapter(spec: registry.AdapterSpec) -> aoti.LoraAdapter:
    """An offered text-model adapter: a peft folder (``adapter_config.json``, ``adapter_model.safetensors``),
    local, or in a Hub repo at its pinned revision (``weight_name``: the folder in the repo, if not its root)."""
    folder = Path(spec.source)
    if not spec.is_local:
        from huggingface_hub import snapshot_download

        inside = f"{spec.weight_name.strip('/')}/" if spec.weight_name else ""
        folder = Path(snapshot_download(spec.source, revision=spec.revision,
                                        allow_patterns=[f"{inside}adapter_config.json", f"{inside}adapter_model.safetensors"])) / inside
    return aoti.LoraAdapter.from_peft(folder, name=spec.id)


def decode_step(calls: aoti.CapturedCalls) -> list[aoti.CapturedCall]:
    """The captured one-token call: a decode step, what a text model's speed is made of."""
    return [c for c in calls.calls if c.kwargs["input_ids"].shape[-1] == 1][:1]


PREFILL_BUCKET = 64  # prompts are padded up to a multiple of this many tokens


def load_draft(draft_id: str, device: str, built: bool) -> tuple[TextModel | None, str]:
    """The draft model ``draft_id`` and "", or None and why not (the model then serves without it);
    ``built``: the target was built in code, not loaded (its draft is given, never loaded)."""
    if built:
        return None, f"no draft given for a model built in code (draft {draft_id} not loaded)"
    spec = registry.draft(draft_id)
    available, why = registry.availability(spec)
    if not available:
        log.warning("draft %s not loaded: %s", draft_id, why)
        return None, f"its draft {draft_id} is unavailable: {why}"
    return TextModel(spec, device), ""


def static_cache_decoder(model: torch.nn.Module, max_cache_len: int, device: str) -> torch.nn.Module:
    """transformers' exportable (input_ids, cache_position) -> logits wrapper of ``model``, on a static KV
    cache of ``max_cache_len`` positions allocated on ``device`` (recorded: `TextModel` follows moves)."""
    from transformers.integrations.executorch import TorchExportableModuleWithStaticCache

    wrapper = TorchExportableModuleWithStaticCache(model, batch_size=1, max_cache_len=max_cache_len, device=device)
    wrapper._aoti_cache_device = device
    return wrapper


def gpu_default(setting: bool | None, device: str) -> bool:
    """A GPU-only behaviour's setting: as set, else on where the weights are on a GPU (``device``)."""
    return device == "cuda" if setting is None else setting


def prefill_buckets(max_prompt_tokens: int) -> list[int]:
    """Every length a prompt is padded to on a GPU: multiples of `PREFILL_BUCKET` up to the longest prompt."""
    return sorted({min(b, max_prompt_tokens) for b in range(PREFILL_BUCKET, max_prompt_tokens + PREFILL_BUCKET, PREFILL_BUCKET)})


class TextModel:
    """A loaded causal LM with its static-cache decoder; `optimize` swaps in the AOTI graphs.

    On a GPU prompts are right-padded to a few bucket lengths (`prefill_length`): there the first call
    at a new shape pays for per-shape setup (attention plans, GEMM heuristics: several times a warm
    prefill), so a server that saw every prompt
    length as a new shape paid it on most requests; with buckets, `optimize` pays it once per bucket
    at startup. On the CPU, where a new length costs nothing extra, prompts run at their own length.
    Padding is exact: the causal mask keeps the pad tokens out of every real position, the first
    token is sampled from the last real position, and decode steps overwrite the pads' cache slots
    before any query can see them."""

    def __init__(self, spec: ModelSpec, device: str = "cpu", model: torch.nn.Module | None = None, tokenizer=None,
                 draft: TextModel | None = None, without_draft: str = "") -> None:
        """Load ``spec.source``, or wrap an already built ``model`` and ``tokenizer`` (e.g. random
        weights of a real architecture, for benchmarks), with ``draft`` as its speculative draft;
        ``without_draft``: why the spec's draft is not loaded (it does not fit beside the model)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        loaded = model
        self.spec = spec
        dtype = torch.float32 if device == "cpu" else getattr(torch, spec.dtype)
        kwargs = {} if spec.is_local else {"revision": spec.revision}
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(spec.source, **kwargs)
        if model is None:
            if device == "cuda" and not on_zerogpu():  # the weights straight onto the GPU: no host copy first
                kwargs["device_map"] = device
            model = AutoModelForCausalLM.from_pretrained(spec.source, dtype=dtype, **kwargs)
        model = model.to(device).eval()
        use_gqa_decode_attention(model)  # decode steps attend on the KV heads: no seven-fold cache copy
        model.generation_config.use_cache = True
        model.generation_config.cache_implementation = "static"
        self.max_cache_len = spec.max_prompt_tokens + spec.max_new_tokens
        self.model = model
        self.decoder = static_cache_decoder(model, self.max_cache_len, device)
        self.status = aoti.Status(runtime="eager", reason="not compiled yet")
        self.ref: dict | None = None  # the artifact bound now (`aoti.Artifact.ref`, with "draft": its draft's), None when eager
        # Speculative decoding's draft (`spec.draft`): given, or loaded with a model loaded from its source;
        # optimized, bound and restored with it. Where it can't be had, speculative requests say why.
        self.draft, self.no_draft = draft, "" if draft is not None or spec.draft else f"{spec.id} has no draft model"
        if draft is None and spec.draft and without_draft:
            self.no_draft = f"its draft {spec.draft} is not loaded: {without_draft}"
        elif draft is None and spec.draft:
            self.draft, self.no_draft = load_draft(spec.draft, device, built=loaded is not None)
        if self.draft is not None and self.draft.max_cache_len < self.max_cache_len:
            raise ValueError(f"the draft {self.draft.spec.id} holds {self.draft.max_cache_len} positions, fewer than "
                             f"{spec.id}'s {self.max_cache_len}: give it max_prompt_tokens and max_new_tokens at least as large")
        # GPU-only behaviours, on where the weights are on a GPU unless set (tests set them on the CPU):
        # queue the next decode step before reading a token (CPU ops run synchronously: nothing to
        # overlap); pad prompts to `prefill_buckets` (per-shape first-call costs are a GPU thing).
        self.queue_ahead: bool | None = None
        self.pad_prompts: bool | None = None
        self._prompt_ids: dict[str, torch.Tensor] = {}  # the last prompts' token ids: a request is checked, then run
        self.adapter = AdapterSlot(spec.id, self.model, read_peft_adapter)  # fused into the draft's target only

    @property
    def vocab_size(self) -> int:
        """The token ids the model reads: its input embedding's rows (may exceed the tokenizer's, padded)."""
        return self.model.get_input_embeddings().num_embeddings

    @property
    def device(self) -> str:
        """Where the weights are now: "cuda" or "cpu" (in a ZeroGPU worker, wherever spaces moved them)."""
        return module_device(self.model).type

    def _follow_weights(self) -> None:
        """Give the decoder a KV cache on the weights' device if they moved since it was made (its
        cache records the device it was made on, and allocates there)."""
        if self.decoder._aoti_cache_device != self.device:
            log.info("%s: weights are on %s now; a new static cache there", self.spec.id, self.device)
            self.decoder = static_cache_decoder(self.model, self.max_cache_len, self.device)

    # --- compile -----------------------------------------------------------------------------------

    @property
    def verify_length(self) -> int | None:
        """Tokens the model reads in one speculative verify step (its draft's ``k`` and the token before
        them); None without a draft."""
        return self.spec.draft_tokens + 1 if self.draft is not None else None

    def capture_calls(self) -> aoti.CapturedCalls:
        """The decoder's calls for a decode step, two prefill lengths (the shortest and the longest) and,
        with a draft, the verify step, so the planner builds a static graph for one token and for the
        verify length and one prefill graph over the other lengths (`optimize`). The calls are
        recorded, not run: only their inputs matter, so a start on a warm cache makes no eager call."""
        lengths = [1, self.spec.max_prompt_tokens]
        lengths.insert(1, next(n for n in range(2, self.spec.max_prompt_tokens) if n != self.verify_length))
        if self.verify_length is not None:
            lengths.insert(1, self.verify_length)
        with aoti.capture(self.decoder, stop=False, run=False) as calls:
            for length in lengths:
                self._feed_zeros(length)
        return calls

    @torch.no_grad()
    def _feed_zeros(self, length: int, start: int = 0) -> None:
        """Run the decoder on ``length`` placeholder tokens at cache positions ``start``..: what
        capturing and warming need (the cache slots written are overwritten by the next request)."""
        ids = torch.zeros(1, length, dtype=torch.long, device=self.device)
        self.decoder(input_ids=ids, cache_position=torch.arange(start, start + length, device=self.device))

    @property
    def hot_module(self) -> torch.nn.Module:
        return self.decoder

    @property
    def storages(self) -> dict[int, int]:
        """Weights and KV cache, the draft's too: storage address -> bytes."""
        return {**module_storages(self.decoder), **(self.draft.storages if self.draft is not None else {})}

    @property
    def nbytes(self) -> int:
        return sum(self.storages.values())

    def optimize(self, recipe: Recipe | None = None, cache: aoti.Cache | None = None,
                 exclusive: contextlib.AbstractContextManager | None = None, cuda_graphs: bool | None = None,
                 on_stage: aoti.OnStage | None = None) -> aoti.Status:
        """Transform, compile (or load) the prefill + decode graphs and swap them in (``recipe``: see
        `text_recipe`). ``exclusive`` is held only while the model runs or is traced, so requests keep
        being served eagerly during the build. On a GPU the one-token decode graph is replayed as a
        CUDA graph (``cuda_graphs``, default on)."""
        self._follow_weights()
        self.adapter.drop()  # built on the model's own weights; the next request fuses again
        recipe = recipe or text_recipe()
        graphs = self.device == "cuda" if cuda_graphs is None else cuda_graphs
        if self.verify_length is not None:  # speculation's verify step: a static graph of its own (a CUDA graph on a GPU)
            recipe = replace(recipe, options=recipe.options.replace(static_sizes=(self.verify_length,)))
        self.status, self.ref = optimize_module(self.decoder, self.capture_calls, recipe, cache,
                                                exclusive, cuda_graphs=graphs, on_stage=on_stage, timed=decode_step)
        if self.draft is not None:
            draft_stage = None if on_stage is None else (lambda stage, estimate_s: on_stage(f"draft: {stage}", estimate_s))
            self._with_draft(self.draft.optimize(recipe, cache, exclusive, cuda_graphs, on_stage=draft_stage))
        if self.status.runtime == "aoti" and gpu_default(self.pad_prompts, self.device):
            with exclusive or contextlib.nullcontext():
                self.warm_up()
        return self.status

    def _with_draft(self, draft_status: aoti.Status) -> None:
        """Fold the draft's outcome into this model's status and reference: compiled with it, or a
        fallback line saying the draft runs eager and why."""
        assert self.draft is not None
        if draft_status.runtime == "aoti":
            if self.ref is not None:
                self.ref = {**self.ref, "draft": self.draft.ref}
        else:
            self.status.fallbacks.append(f"draft {self.draft.spec.id} -> eager: {draft_status.reason}")

    def bind(self, ref: dict, cache: aoti.Cache | None = None, cuda_graphs: bool | None = None) -> aoti.Status:
        """Swap in the graphs of an artifact compiled elsewhere (`aoti.load`): no capture, no build.
        The decode step's CUDA graph is captured at its first call."""
        self._follow_weights()
        self.adapter.drop()
        graphs = self.device == "cuda" if cuda_graphs is None else cuda_graphs
        self.status, self.ref = bind_module(self.decoder, {k: v for k, v in ref.items() if k != "draft"}, cache, cuda_graphs=graphs)
        if self.draft is not None and ref.get("draft"):
            self._with_draft(self.draft.bind(ref["draft"], cache, cuda_graphs))
        elif self.draft is not None:
            self.draft.restore()
        if self.ref is not None:
            self.ref = ref
        return self.status

    def prefill_length(self, length: int) -> int:
        """The length a prompt of ``length`` tokens is padded to: its bucket (its own length on the CPU)."""
        bucket = next((b for b in prefill_buckets(self.spec.max_prompt_tokens) if b >= length), None)
        if bucket is None:
            raise ValueError(f"the prompt is {length} tokens; this model takes at most {self.spec.max_prompt_tokens}.")
        return bucket if gpu_default(self.pad_prompts, self.device) else length

    def warm_up(self) -> None:
        """Run a prefill at every bucket length and one decode step, so that requests meet no shape
        for the first time (and the decode step's CUDA graph is captured before the first request)."""
        start = time.perf_counter()
        buckets = prefill_buckets(self.spec.max_prompt_tokens)
        for length in buckets:
            self._feed_zeros(length)
        self._feed_zeros(1, start=buckets[-1])
        if self.draft is not None:
            self._feed_zeros(self.spec.draft_tokens + 1, start=buckets[-1])  # the verify step's length
            self.draft.warm_up()
        if self.device == "cuda":
            torch.cuda.synchronize()
        log.info("%s: warmed %d prefill lengths and the decode step in %.2f s", self.spec.id, len(buckets),
                 time.perf_counter() - start)

    def restore(self, transforms: bool = True) -> None:
        """Eager again; ``transforms=False`` leaves the rewrites in place (a model about to be dropped)."""
        self.adapter.drop()
        self.status, self.ref = aoti.restore(self.decoder, transforms=transforms), None
        if self.draft is not None:
            self.draft.restore(transforms)

    # --- generate ----------------------------------------------------------------------------------

    def prompt_ids(self, prompt: str) -> torch.Tensor:
        """The prompt's token ids on the CPU (tokenized once for the check and the run that follows);
        a ValueError for a prompt longer than the model takes."""
        ids = self._prompt_ids.get(prompt)
        if ids is None:
            ids = self.tokenizer(prompt, return_tensors="pt").input_ids
            self._prompt_ids = {**dict(list(self._prompt_ids.items())[-7:]), prompt: ids}  # the last 8
        self.prefill_length(ids.shape[1])
        return ids

    def check_inputs(self, prompt: str, params: SamplingParams) -> torch.Tensor:
        """Validate a request (`check_text_request`, the prompt's length); its token ids on the model's device."""
        check_text_request(self.spec, prompt, params)
        return self.prompt_ids(prompt).to(self.device)

    @torch.no_grad()
    def generate(self, prompt: str, params: SamplingParams) -> Iterator[TextStep]:
        """Stream the continuation of ``prompt``: each step yields the whole text generated so far."""
        ids = self.check_inputs(prompt, params)
        eos = None if params.ignore_eos else self.tokenizer.eos_token_id
        switch_s = round(self.adapter.use(params.lora, params.lora_scale), 4)
        start = time.perf_counter()
        generated: list[int] = []
        ttft = None
        stats = Speculation()
        tokens = self.decode_speculative(ids, params, stats) if params.speculative else self.decode_tokens(ids, params)
        for token in tokens:
            if token == eos:
                break
            generated.append(token)
            if ttft is None:
                ttft = time.perf_counter() - start
            yield TextStep(self.tokenizer.decode(generated, skip_special_tokens=True), len(generated), ttft,
                           time.perf_counter() - start, stats.drafted, stats.accepted, switch_s)

    def decode_speculative(self, ids: torch.Tensor, params: SamplingParams, stats: Speculation) -> Iterator[int]:
        """Like `decode_tokens`, with the draft proposing ``spec.draft_tokens`` tokens a round and this
        model verifying them in one step (`engines.speculative`): the model's own greedy text (up to
        floating-point rounding on a GPU), the same sampling distribution. ``stats`` counts drafted and kept tokens."""
        if self.draft is None:
            raise ValueError(f"`speculative` decoding is not available for {self.spec.id}: {self.no_draft}.")
        self._follow_weights()
        self.draft._follow_weights()
        generator = torch.Generator(self.device).manual_seed(params.seed) if params.seed is not None else None
        distribution = None if params.temperature <= 0 else (lambda logits: token_probabilities(logits, params))
        return speculative.decode(self, self.draft, ids, params.max_new_tokens, self.spec.draft_tokens, distribution,
                                  generator, stats)

    def decode_tokens(self, ids: torch.Tensor, params: SamplingParams) -> Iterator[int]:
        """Prefill ``ids`` (padded to its bucket on a GPU), then yield up to ``params.max_new_tokens`` sampled
        token ids.

        On a GPU the next decode step is queued before the current token is read back, so the GPU
        never idles while Python reads a token, checks it and decodes text. The token's copy to the
        host is queued before that step, and only that copy is waited for (a plain ``.item()`` after
        queueing would wait for the queued step too). A consumer that stops early leaves at most one
        queued step unused."""
        self._follow_weights()
        generator = torch.Generator(self.device).manual_seed(params.seed) if params.seed is not None else None
        positions = torch.arange(self.max_cache_len, device=self.device)
        # Each decode step's position as a one-element slice 16-byte aligned: AOTInductor copies an
        # input that is not (and warns, every call), which every other slice of ``positions`` is.
        aligned = positions.repeat_interleave(2)
        length = ids.shape[1]
        padded = torch.nn.functional.pad(ids, (0, self.prefill_length(length) - length))  # pad id 0: masked out
        logits = self.decoder(input_ids=padded, cache_position=positions[: padded.shape[1]])
        token = sample_next(logits[0, length - 1], params, generator)
        count = min(params.max_new_tokens, self.max_cache_len - length + 1)

        def step(token: torch.Tensor, position: int) -> torch.Tensor:
            """Feed the token at ``position`` (its KV goes to that cache slot); sample the next one."""
            logits = self.decoder(input_ids=token.view(1, 1), cache_position=aligned[2 * position : 2 * position + 1])
            return sample_next(logits[0, -1], params, generator)

        for i in range(count):
            more = i + 1 < count
            read = read_later(token)
            queued = step(token, length + i) if gpu_default(self.queue_ahead, self.device) and more else None
            yield read()
            if not more:
                return
            token = queued if queued is not None else step(token, length + i)
