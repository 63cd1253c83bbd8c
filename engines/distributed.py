"""Several devices, on PyTorch's distributed runtime (NCCL on GPUs, gloo on the CPU).

- Text: a causal LM split by transformers tensor parallelism (``tp_plan="auto"``): weights sharded,
  logits replicated; rank 0 picks each token and broadcasts it, and streams the text back.
- Image: a diffusion transformer run with diffusers context parallelism (Ulysses): every rank holds
  the whole pipeline, the transformer's token sequence is split across ranks and attention heads are
  exchanged all-to-all, so activations and attention work are divided (weights are not). Every rank
  runs the same seeded pipeline; rank 0 returns the image. Models without a diffusers context-parallel
  plan (UNets, SD3) are refused with that reason.

One process per device, started with ``torch.multiprocessing`` (spawn) and the same env:// rendezvous
torchrun uses. Rank 0 takes requests from the app over a queue and broadcasts each to the other ranks.
The app side watches the workers: a worker that dies, or no answer within the timeout, fails the
request with a clear message and restarts the engine. Workers run eager: AOTI/torch.compile of
DTensor-sharded models and of context-parallel attention are not wired up.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os
import queue
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch.multiprocessing as mp

from .image import ImageParams, ImageResult
from .registry import ModelSpec
from .text import SamplingParams, TextStep

log = logging.getLogger(__name__)

# NVLink multicast off everywhere (it can take a shared host's GPUs out of service).
NCCL_SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
READY_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class _Request:
    id: int
    prompt: str
    params: SamplingParams | ImageParams


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def enable_context_parallel(denoiser: Any, world_size: int) -> str:
    """Split ``denoiser``'s sequence over the ``world_size`` ranks with diffusers' Ulysses context
    parallelism. Raises ValueError naming the model when diffusers has no plan for it."""
    import torch
    from diffusers import ContextParallelConfig

    name = type(denoiser).__name__
    if getattr(denoiser, "_cp_plan", None) is None:
        raise ValueError(f"{name} has no context-parallel plan in diffusers, so it can't be split across GPUs")
    heads = getattr(denoiser.config, "num_attention_heads", world_size)
    if heads % world_size:
        raise ValueError(f"{name} has {heads} attention heads, not divisible by {world_size} ranks (Ulysses splits heads)")
    # diffusers picks each rank's device as rank % accelerator count; on a CPU-only host that count is 0.
    no_accelerator = torch.accelerator.device_count() == 0
    with contextlib.ExitStack() as stack:
        if no_accelerator:
            from unittest import mock

            stack.enter_context(mock.patch.object(torch.accelerator, "device_count", lambda: 1))
        denoiser.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world_size))
    return f"context parallel (Ulysses) x{world_size}"


def _worker(rank: int, world_size: int, spec: ModelSpec, device: str, port: int, requests: Any, results: Any) -> None:
    """One rank: join the group, load its part, then serve broadcast requests until told to stop."""
    import torch
    import torch.distributed as dist

    os.environ.update(NCCL_SAFE_ENV, RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, timeout=datetime.timedelta(days=1))  # idle servers wait in broadcast
    try:
        serve = _text_server(spec, rank, device) if spec.task == "text" else _image_server(spec, world_size, device)
    except Exception as exc:
        if rank == 0:
            results.put(("failed", None, f"{type(exc).__name__}: {exc}"))
        dist.destroy_process_group()
        return
    if rank == 0:
        results.put(("ready", None, None))
    while True:
        box = [requests.get() if rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        request = box[0]
        if request is None:
            break
        try:
            serve(request, lambda kind, payload, rid=request.id: rank == 0 and results.put((kind, rid, payload)))
            if rank == 0:
                results.put(("done", request.id, None))
        except Exception as exc:  # reported to the app; the group stays up for the next request
            if rank == 0:
                results.put(("error", request.id, f"{type(exc).__name__}: {exc}"))
    dist.destroy_process_group()


def _text_server(spec: ModelSpec, rank: int, device: str) -> Any:
    """Load this rank's tensor-parallel shard; return the request handler (streams tokens)."""
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

    from .text import sample_next

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    kwargs = {} if spec.is_local else {"revision": spec.revision}
    model = AutoModelForCausalLM.from_pretrained(spec.source, tp_plan="auto", dtype=dtype, **kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(spec.source, **kwargs)
    target = torch.device(f"cuda:{rank}" if device == "cuda" else "cpu")

    @torch.no_grad()
    def serve(request: _Request, send: Any) -> None:
        ids = tokenizer(request.prompt, return_tensors="pt").input_ids.to(target)
        params = request.params
        generator = torch.Generator(target).manual_seed(params.seed) if params.seed is not None else None
        cache, generated = DynamicCache(config=model.config), []
        start, ttft = time.perf_counter(), None
        logits = model(input_ids=ids, past_key_values=cache, use_cache=True).logits
        for _ in range(params.max_new_tokens):
            token = sample_next(logits[0, -1], params, generator).view(1, 1)
            dist.broadcast(token, src=0)  # every rank continues with rank 0's choice
            if token.item() == tokenizer.eos_token_id and not params.ignore_eos:
                break
            generated.append(int(token.item()))
            ttft = ttft or time.perf_counter() - start
            send("token", TextStep(tokenizer.decode(generated, skip_special_tokens=True), len(generated), ttft, time.perf_counter() - start))
            logits = model(input_ids=token, past_key_values=cache, use_cache=True).logits

    return serve


def _image_server(spec: ModelSpec, world_size: int, device: str) -> Any:
    """Load the whole pipeline on this rank and split its denoiser's sequence across the ranks."""
    from .image import ImageModel

    model = ImageModel(spec, device)
    how = enable_context_parallel(model.denoiser, world_size)
    log.info("distributed: %s runs %s", spec.id, how)

    def serve(request: _Request, send: Any) -> None:
        send("image", model.generate(request.prompt, request.params))  # same seed on every rank

    return serve


STEP_CACHE_REFUSAL = ("step caching (`step_cache`) is not offered on the multi-GPU engine: each GPU would decide on "
                      "its own part of the image; choose \"off\".")


class DistributedEngine:
    """A model on ``world_size`` worker processes: `generate` streams text like `TextModel` (tensor
    parallel), `generate_image` returns an image like `ImageModel` (context parallel)."""

    def __init__(self, spec: ModelSpec, world_size: int, device: str = "cpu", timeout_s: float = 60.0) -> None:
        self.spec, self.world_size, self.device, self.timeout_s = spec, world_size, device, timeout_s
        self.parallelism = "tensor parallel" if spec.task == "text" else "context parallel"
        self.processes: list[Any] = []
        self.restarts = 0
        self._ids = 0
        self._context = mp.get_context("spawn")
        atexit.register(self.shutdown)

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the workers and wait until rank 0 has loaded its shard."""
        self.shutdown()
        os.environ.update(NCCL_SAFE_ENV)  # inherited by the spawned workers
        port = _free_port()
        self.requests, self.results = self._context.Queue(), self._context.Queue()
        self.processes = [
            self._context.Process(target=_worker, args=(r, self.world_size, self.spec, self.device, port, self.requests, self.results),
                                  name=f"aoti-{'tp' if self.parallelism == 'tensor parallel' else 'cp'}-rank{r}", daemon=True)
            for r in range(self.world_size)
        ]
        for process in self.processes:
            process.start()
        try:
            kind, _, payload = self._next(READY_TIMEOUT_S)
        except (RuntimeError, TimeoutError) as exc:
            self.shutdown(timeout=2.0)
            raise RuntimeError(f"distributed workers for {self.spec.id} failed to start: {exc}") from None
        if kind != "ready":
            self.shutdown(timeout=10.0)
            raise RuntimeError(f"distributed workers for {self.spec.id} failed to start: {payload}")
        log.info("distributed: %d workers serving %s on %s", self.world_size, self.spec.id, self.device)

    def shutdown(self, timeout: float = 20.0) -> None:
        """Stop the workers cleanly; kill what doesn't stop in time. Leaves no process behind."""
        if not self.processes:
            return
        if all(p.is_alive() for p in self.processes):
            self.requests.put(None)
        deadline = time.time() + timeout
        for process in self.processes:
            process.join(max(0.1, deadline - time.time()))
        for process in self.processes:
            if process.is_alive():
                process.kill()
                process.join(5)
        self.processes = []

    def restart(self) -> None:
        self.restarts += 1
        log.warning("distributed: restarting the workers (restart %d)", self.restarts)
        self.shutdown(timeout=2.0)
        self.start()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    # --- requests ----------------------------------------------------------------------------------

    def _next(self, timeout: float) -> tuple[str, int | None, Any]:
        """The next message from rank 0, watching for dead workers while waiting."""
        deadline = time.time() + timeout
        while True:
            dead = [p.name for p in self.processes if not p.is_alive()]
            if dead:
                raise RuntimeError(f"distributed worker {', '.join(dead)} died; the engine is restarting")
            try:
                return self.results.get(timeout=min(0.5, max(0.01, deadline - time.time())))
            except queue.Empty:
                if time.time() >= deadline:
                    raise TimeoutError(f"no answer from the distributed workers within {timeout:.0f} s; the engine is restarting") from None

    def _ask(self, prompt: str, params: SamplingParams | ImageParams) -> Iterator[tuple[str, Any]]:
        """Send one request; yield rank 0's messages for it until done. A dead or hung worker, or a
        failure on the workers, raises RuntimeError and restarts the engine."""
        if not prompt.strip():
            raise ValueError("`prompt` is empty: type some text.")
        if not self.processes:
            self.start()
        self._ids += 1
        request = _Request(self._ids, prompt, params)
        self.requests.put(request)
        try:
            while True:
                kind, request_id, payload = self._next(self.timeout_s)
                if request_id != request.id:
                    continue  # the tail of an earlier request whose reader went away
                if kind == "done":
                    return
                if kind == "error":
                    time.sleep(0.5)  # a collective fails on rank 0 when a peer dies: name the dead peer
                    dead = [p.name for p in self.processes if not p.is_alive()]
                    cause = f"worker {', '.join(dead)} died" if dead else f"generation failed on the workers: {payload}"
                    raise RuntimeError(f"{cause}; the engine is restarting")
                yield kind, payload
        except (RuntimeError, TimeoutError) as exc:
            self.restart()  # after any failure the process group may be broken: start clean
            raise RuntimeError(str(exc)) from None

    def generate(self, prompt: str, params: SamplingParams) -> Iterator[TextStep]:
        """Stream the continuation of ``prompt`` (a text model)."""
        for _, step in self._ask(prompt, params):
            yield step

    def generate_image(self, prompt: str, params: ImageParams) -> ImageResult:
        """One image (an image model); every rank denoises its part of the sequence. Step caching is
        refused: each rank would judge the first block's residual on its own part of the sequence and
        could skip blocks another rank runs (their collectives would never meet)."""
        if params.step_cache != "off":
            raise ValueError(STEP_CACHE_REFUSAL)
        images = [payload for kind, payload in self._ask(prompt, params) if kind == "image"]
        return images[-1]
