"""The catalog of selectable models. Adding a model is adding one `ModelSpec` to `CATALOG`."""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
Task = Literal["text", "image"]


@dataclass(frozen=True)
class ModelSpec:
    """One selectable model.

    Args:
        id: short name shown in the UI and used by the API.
        task: "text" (causal LM, transformers) or "image" (diffusion, diffusers).
        source: a local folder, or a Hub repo id.
        revision: Hub commit or tag (None for local folders).
        params_b: parameter count in billions (memory estimates before loading).
        encoders_b: image pipelines: the billions of those parameters in text encoders, which stay in
            their dtype under FP8 (only the denoiser is quantized) and can wait in host memory.
        dtype: weights dtype on GPU ("bfloat16") — CPU runs float32.
        compile_module: the submodule compiled with AOTI ("decoder", "transformer", "unet").
        max_new_tokens / max_prompt_tokens: text limits; sizes: image (height, width) buckets.
        steps: default denoising steps; guidance: default guidance scale (None: not used).
        fp8: whether an FP8 preset is offered; regional: whether regional compile is offered.
        step_cache: image models only: whether step caching is offered (`aoti.step_cache`: its denoiser's
            blocks can be skipped one by one); such a model is compiled regionally unless the owner says not.
        pipeline: image models only: "diffusers" (any `DiffusionPipeline`), or one of the embedded
            label-conditioned pipelines: "shapes" (`ShapesPipeline`, a UNet) or "shapes-dit"
            (`ShapesDiTPipeline`, a FLUX transformer).
        family: the architecture family where the optimizations know one ("flux": FLUX attention's
            fused norm + rotary kernel on GPUs).
        draft: text models only: the id of a smaller model with the same tokenizer that drafts tokens
            for speculative decoding (`engines.speculative`); "" for none. draft_tokens: drafted per round.
    """

    id: str
    task: Task
    source: str
    revision: str | None = None
    params_b: float = 0.0
    encoders_b: float = 0.0
    dtype: str = "bfloat16"
    compile_module: str = ""
    max_new_tokens: int = 256
    max_prompt_tokens: int = 256
    sizes: tuple[tuple[int, int], ...] = ()
    steps: int = 28
    guidance: float | None = None
    fp8: bool = True
    regional: bool = False
    step_cache: bool = False
    pipeline: str = "diffusers"
    family: str = ""
    draft: str = ""
    draft_tokens: int = 4
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_local(self) -> bool:
        return Path(self.source).is_absolute()

    @property
    def embedded_shapes(self) -> bool:
        """One of the embedded label-conditioned pipelines (a fixed vocabulary, no text encoders)."""
        return self.pipeline in ("shapes", "shapes-dit")


def _hub_cached(repo_id: str, revision: str | None) -> tuple[bool, str | None]:
    """Whether the model's files are in the local Hugging Face cache; when not, the error that is not
    a plain cache miss (a permission error, a damaged cache), so it can be said."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        snapshot_download(repo_id, revision=revision, local_files_only=True, allow_patterns=["*.json"])
        return True, None
    except LocalEntryNotFoundError:
        return False, None
    except Exception as exc:  # reading the cache itself failed: say so rather than "unreachable"
        return False, f"{type(exc).__name__}: {exc}"[:200]


_REACHABLE: dict[str, tuple[float, bool]] = {}
REACHABLE_TTL_S = 60.0


def _hub_reachable() -> bool:
    """Whether huggingface.co answers (remembered for a minute, so the catalog stays fast)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    checked = _REACHABLE.get("hub")
    if checked and time.monotonic() - checked[0] < REACHABLE_TTL_S:
        return checked[1]
    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
        reachable = True
    except OSError:
        reachable = False
    _REACHABLE["hub"] = (time.monotonic(), reachable)
    return reachable


def availability(spec: ModelSpec) -> tuple[bool, str]:
    """Whether a model can be selected here, and if not, why."""
    if spec.is_local:
        return (Path(spec.source).exists(), "embedded" if Path(spec.source).exists() else f"missing {spec.source}: run its training script")
    cached, cache_error = _hub_cached(spec.source, spec.revision)
    if cached:
        return True, "in the local Hugging Face cache"
    if _hub_reachable():
        return True, "downloads from the Hugging Face Hub on first use"
    if cache_error:
        return False, f"the Hugging Face cache could not be read ({cache_error}) and the Hub is unreachable"
    return False, "the Hugging Face Hub is unreachable and the model is not in the local cache"


CATALOG: tuple[ModelSpec, ...] = (
    ModelSpec(
        id="tiny-llama-pydoc", task="text", source=str(ASSETS / "tiny-llama-pydoc"), params_b=0.002,
        compile_module="decoder", max_new_tokens=200, max_prompt_tokens=128, fp8=False, draft="tiny-llama-pydoc-draft",
        description="Embedded 2M-parameter Llama trained on Python docstrings (assets/train_text_model.py).",
    ),
    ModelSpec(
        id="tiny-shapes-unet", task="image", source=str(ASSETS / "tiny-shapes-unet"), params_b=0.002,
        compile_module="unet", sizes=((32, 32),), steps=20, fp8=False, pipeline="shapes",
        description="Embedded 2M-parameter label-conditioned UNet that draws shapes (assets/train_image_model.py).",
    ),
    ModelSpec(
        id="tiny-shapes-dit", task="image", source=str(ASSETS / "tiny-shapes-dit"), params_b=0.0023,
        compile_module="transformer", sizes=((32, 32),), steps=20, fp8=False, regional=True, step_cache=True,
        pipeline="shapes-dit", family="flux",
        description="Embedded 2.3M-parameter FLUX transformer (2 joint, 4 single blocks) that draws the same shapes "
                    "(assets/train_dit_model.py).",
    ),
    ModelSpec(
        id="qwen2.5-0.5b-instruct", task="text", source="Qwen/Qwen2.5-0.5B-Instruct", params_b=0.49,
        compile_module="decoder", max_new_tokens=512, max_prompt_tokens=1024,
    ),
    ModelSpec(
        id="qwen2.5-7b-instruct", task="text", source="Qwen/Qwen2.5-7B-Instruct", params_b=7.6,
        compile_module="decoder", max_new_tokens=512, max_prompt_tokens=1024, draft="qwen2.5-0.5b-instruct",
    ),
    ModelSpec(
        id="llama-3.1-8b-instruct", task="text", source="meta-llama/Llama-3.1-8B-Instruct", params_b=8.0,
        compile_module="decoder", max_new_tokens=512, max_prompt_tokens=1024,
    ),
    ModelSpec(
        id="flux.1-schnell", task="image", source="black-forest-labs/FLUX.1-schnell", params_b=12.0 + 4.9, encoders_b=4.9,
        compile_module="transformer", sizes=((1024, 1024), (768, 1344), (1344, 768)), steps=4, guidance=None,
        regional=True, step_cache=True, family="flux",
    ),
    ModelSpec(
        id="flux.1-dev", task="image", source="black-forest-labs/FLUX.1-dev", params_b=12.0 + 4.9, encoders_b=4.9,
        compile_module="transformer", sizes=((1024, 1024), (768, 1344), (1344, 768)), steps=28, guidance=3.5,
        regional=True, step_cache=True, family="flux",
    ),
    ModelSpec(
        id="sd3.5-medium", task="image", source="stabilityai/stable-diffusion-3.5-medium", params_b=2.5 + 5.6, encoders_b=5.6,
        compile_module="transformer", sizes=((1024, 1024),), steps=28, guidance=4.5, regional=True,
    ),
)


# Draft models for speculative decoding: loaded with the model they draft for, never offered on their own.
DRAFTS: tuple[ModelSpec, ...] = (
    ModelSpec(
        id="tiny-llama-pydoc-draft", task="text", source=str(ASSETS / "tiny-llama-pydoc-draft"), params_b=0.0003,
        compile_module="decoder", max_new_tokens=200, max_prompt_tokens=128, fp8=False,
        description="Embedded 0.3M-parameter draft of tiny-llama-pydoc (assets/train_text_model.py --draft).",
    ),
)


def get(model_id: str) -> ModelSpec:
    """The catalog's spec for ``model_id``; a KeyError listing the catalog otherwise. Drafts are not in
    the catalog: they load with the model they draft for (`draft`), never by a request's id."""
    for spec in CATALOG:
        if spec.id == model_id:
            return spec
    known = ", ".join(s.id for s in CATALOG)
    if any(d.id == model_id for d in DRAFTS):
        raise KeyError(f"{model_id!r} is a draft model, loaded only with the model it drafts for; choose one of: {known}")
    raise KeyError(f"unknown model {str(model_id)[:100]!r}; known models: {known}")


def draft(model_id: str) -> ModelSpec:
    """The spec of a draft model (`ModelSpec.draft`): a draft or a catalog model that drafts for another."""
    for spec in (*DRAFTS, *CATALOG):
        if spec.id == model_id:
            return spec
    raise KeyError(f"unknown draft model {model_id!r}")


@dataclass(frozen=True)
class AdapterSpec:
    """One LoRA adapter a visitor may pick for ``model``: for an image model's denoiser a diffusers LoRA
    file, for a text model a peft adapter folder; local, or in a Hub repo at a pinned ``revision`` (an
    adapter is a download: only the ones listed here and in the owner's `owner_adapters`)."""

    id: str
    model: str
    source: str  # a local .safetensors file (image) or peft folder (text), or a Hub repo id
    weight_name: str | None = None  # in a Hub repo: the file (image), or the folder if not the root (text)
    revision: str | None = None
    description: str = ""

    @property
    def is_local(self) -> bool:
        return Path(self.source).is_absolute()


ADAPTERS: tuple[AdapterSpec, ...] = (
    AdapterSpec(
        id="outline", model="tiny-shapes-dit", source=str(ASSETS / "tiny-shapes-dit-outline" / "pytorch_lora_weights.safetensors"),
        description="Embedded rank-8 adapter: the shapes drawn as outlines (assets/train_dit_lora.py).",
    ),
    AdapterSpec(
        id="shout", model="tiny-llama-pydoc", source=str(ASSETS / "tiny-llama-pydoc-shout"),
        description="Embedded rank-8 adapter: the docstrings go on in capitals (assets/train_text_lora.py).",
    ),
)


ENV_ADAPTERS = "AOTI_ADAPTERS"  # the owner's adapters: a JSON list, or the path of a JSON file holding one


@functools.cache
def owner_adapters() -> tuple[AdapterSpec, ...]:
    """The adapters the owner allows beyond the catalog's, from ``AOTI_ADAPTERS`` (a Space variable):
    a JSON list of ``{"id", "model", "source", "weight_name", "revision", "description"}``, or the path
    of a file holding one. A Hub adapter must pin ``revision`` to a commit (40 hex digits: what was
    allowed is what is downloaded), and an image model's names its file (``weight_name``); a local one
    is an absolute path. A ValueError naming the entry and what is wrong where one is not so (the app
    does not start)."""
    text = os.environ.get(ENV_ADAPTERS, "").strip()
    if not text:
        return ()
    if not text.startswith(("[", "{")):  # otherwise a file
        try:
            text = Path(text).read_text()
        except OSError as exc:
            raise ValueError(f"{ENV_ADAPTERS}: {text!r} is neither a JSON list nor a readable file ({exc.strerror})") from None
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{ENV_ADAPTERS} is not valid JSON: {exc}") from None
    if not isinstance(entries, list):
        raise ValueError(f"{ENV_ADAPTERS} must be a JSON list of adapters")
    fields, out = {f for f in AdapterSpec.__dataclass_fields__}, []
    for i, entry in enumerate(entries):
        where = f"{ENV_ADAPTERS}[{i}]"
        if not isinstance(entry, dict) or not {"id", "model", "source"} <= entry.keys() or not entry.keys() <= fields:
            raise ValueError(f"{where} must be an object with id, model and source (and optionally weight_name, revision, "
                             f"description); got {str(entry)[:200]}")
        if not all(isinstance(v, str) for v in entry.values()):
            raise ValueError(f"{where}: every field is text")
        spec = AdapterSpec(**entry)
        try:
            model = get(spec.model)
        except KeyError:
            raise ValueError(f"{where}: {spec.model!r} is not a model of the catalog") from None
        if not spec.is_local and not re.fullmatch(r"[0-9a-f]{40}", spec.revision or ""):
            raise ValueError(f"{where}: a Hub adapter ({spec.source}) needs a revision pinned to a commit (40 hex digits)")
        if not spec.is_local and model.task == "image" and not spec.weight_name:
            raise ValueError(f"{where}: a Hub adapter of an image model ({spec.source}) needs its weight_name (the file)")
        if any(a.model == spec.model and a.id == spec.id for a in (*ADAPTERS, *out)):
            raise ValueError(f"{where}: {spec.model} already has an adapter named {spec.id!r}")
        out.append(spec)
    return tuple(out)


def adapters_for(model_id: str) -> list[AdapterSpec]:
    """The adapters offered for ``model_id``: the catalog's and the owner's (`owner_adapters`), where
    available here (a local file that exists, or a Hub adapter)."""
    return [a for a in (*ADAPTERS, *owner_adapters()) if a.model == model_id and (not a.is_local or Path(a.source).exists())]


def adapter(model_id: str, adapter_id: str) -> AdapterSpec:
    """The adapter ``adapter_id`` of ``model_id``; a ValueError naming those offered otherwise."""
    offered = adapters_for(model_id)
    for spec in offered:
        if spec.id == adapter_id:
            return spec
    names = ", ".join(a.id for a in offered) or "none"
    raise ValueError(f"`lora` {str(adapter_id)[:100]!r} is not offered for {model_id} (offered: {names}).")


def startup_models(requested: str | None = None) -> list[str]:
    """The models to load at startup: ``requested`` (comma-separated ids, at most one per task, as in
    ``$AOTI_STARTUP_MODELS``), else the first embedded one of each task. A ValueError names what is wrong."""
    if not requested or not requested.strip():
        first: dict[str, str] = {}
        for spec in CATALOG:
            if spec.is_local:
                first.setdefault(spec.task, spec.id)
        return list(first.values())
    ids = [i.strip() for i in requested.split(",") if i.strip()]
    try:
        tasks = [get(i).task for i in ids]
    except KeyError as exc:
        raise ValueError(str(exc.args[0])) from None
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"startup models {ids}: at most one text and one image model (one of each task is loaded at a time).")
    return ids
