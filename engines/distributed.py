"""Several devices: a causal LM split by transformers tensor parallelism (``tp_plan="auto"``) across
worker processes on PyTorch's distributed runtime (NCCL on GPUs, gloo on the CPU).

One process per device, started with ``torch.multiprocessing`` (spawn) and the same env:// rendezvous
torchrun uses. Rank 0 takes requests from the app over a queue, broadcasts each to the other ranks,
every rank runs the same decode step (the weights are sharded; logits come out replicated), rank 0
picks the token, broadcasts it and streams the text back. The app side watches the workers: a worker
that dies, or no token within the timeout, fails the request with a clear message and restarts the
engine. Workers run eager: AOTI/torch.compile of DTensor-sharded models is not wired up yet.
"""

from __future__ import annotations

import atexit
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

from .text import SamplingParams, TextStep

log = logging.getLogger(__name__)

# NVLink multicast off everywhere (it can take a shared host's GPUs out of service).
NCCL_SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
READY_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class _Request:
    id: int
    prompt: str
    params: SamplingParams


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, source: str, device: str, port: int, requests: Any, results: Any) -> None:
    """One rank: join the group, load its shard, then serve broadcast requests until told to stop."""
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

    from .text import sample_next

    os.environ.update(NCCL_SAFE_ENV, RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, timeout=datetime.timedelta(days=1))  # idle servers wait in broadcast
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(source, tp_plan="auto", dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    target = torch.device(f"cuda:{rank}" if device == "cuda" else "cpu")
    if rank == 0:
        results.put(("ready", None, None))
    while True:
        box = [requests.get() if rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        request = box[0]
        if request is None:
            break
        try:
            ids = tokenizer(request.prompt, return_tensors="pt").input_ids.to(target)
            params = request.params
            generator = torch.Generator(target).manual_seed(params.seed) if params.seed is not None else None
            cache, generated = DynamicCache(config=model.config), []
            start, ttft = time.perf_counter(), None
            with torch.no_grad():
                logits = model(input_ids=ids, past_key_values=cache, use_cache=True).logits
                for _ in range(params.max_new_tokens):
                    token = sample_next(logits[0, -1], params, generator).view(1, 1)
                    dist.broadcast(token, src=0)  # every rank continues with rank 0's choice
                    if token.item() == tokenizer.eos_token_id:
                        break
                    generated.append(int(token.item()))
                    ttft = ttft or time.perf_counter() - start
                    if rank == 0:
                        text = tokenizer.decode(generated, skip_special_tokens=True)
                        results.put(("token", request.id, TextStep(text, len(generated), ttft, time.perf_counter() - start)))
                    logits = model(input_ids=token, past_key_values=cache, use_cache=True).logits
            if rank == 0:
                results.put(("done", request.id, None))
        except Exception as exc:  # reported to the app; the group stays up for the next request
            if rank == 0:
                results.put(("error", request.id, f"{type(exc).__name__}: {exc}"))
    dist.destroy_process_group()


class DistributedEngine:
    """A tensor-parallel LM on ``world_size`` worker processes; `generate` streams like `TextModel`."""

    def __init__(self, source: str, world_size: int, device: str = "cpu", timeout_s: float = 60.0) -> None:
        self.source, self.world_size, self.device, self.timeout_s = source, world_size, device, timeout_s
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
            self._context.Process(target=_worker, args=(r, self.world_size, self.source, self.device, port, self.requests, self.results),
                                  name=f"aoti-tp-rank{r}", daemon=True)
            for r in range(self.world_size)
        ]
        for process in self.processes:
            process.start()
        kind, _, payload = self._next(READY_TIMEOUT_S)
        if kind != "ready":
            raise RuntimeError(f"distributed workers failed to start: {payload}")
        log.info("distributed: %d workers serving %s on %s", self.world_size, self.source, self.device)

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

    def generate(self, prompt: str, params: SamplingParams) -> Iterator[TextStep]:
        """Stream the continuation; a dead or hung worker raises RuntimeError and restarts the engine."""
        if not prompt.strip():
            raise ValueError("`prompt` is empty: type some text to continue.")
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
                if kind == "token":
                    yield payload
                elif kind == "done":
                    return
                elif kind == "error":
                    time.sleep(0.5)  # a collective fails on rank 0 when a peer dies: name the dead peer
                    dead = [p.name for p in self.processes if not p.is_alive()]
                    cause = f"worker {', '.join(dead)} died" if dead else f"generation failed on the workers: {payload}"
                    raise RuntimeError(f"{cause}; the engine is restarting")
        except (RuntimeError, TimeoutError) as exc:
            self.restart()  # after any failure the process group may be broken: start clean
            raise RuntimeError(str(exc)) from None
