"""What a stranger sends, made typed: raw values from the API or the UI into request parameters.

Every input of a public endpoint passes through here before anything else looks at it, so a wrong
type or a value out of range is refused with a message that names the input and its bounds ("`steps`
must be a whole number between 1 and 50, got 1000000"), never with a bare 400 or an overflow deep in
torch. The bounds that depend on the model (a text model's `max_new_tokens`, an image model's sizes)
are checked next, by `check_text_request` and `check_image_request`.
"""

from __future__ import annotations

import math
from typing import Any

from .adapters import LORA_SCALE_MAX
from .image import GUIDANCE_MAX, MAX_STEPS, ImageParams
from .recipes import Switches
from .text import TEMPERATURE_MAX, SamplingParams

SEED_MAX = 2**32 - 1  # what every pipeline's generator takes (torch's limit is 2**64 - 1: kept well inside)


def _number(name: str, value: Any) -> float:
    """``value`` as a finite number (a bool is not one: ``True`` for `steps` is a mistake)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`{name}` must be a number, got {value!r}."[:200])
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
    return float(value)


def whole_number(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in [low, high]; 3.0 counts as 3."""
    number = _number(name, value)
    if not number.is_integer() or not low <= number <= high:
        raise ValueError(f"`{name}` must be a whole number between {low} and {high}, got {value!r}.")
    return int(number)


def number(name: str, value: Any, low: float, high: float) -> float:
    """``value`` as a float in [low, high]."""
    number = _number(name, value)
    if not low <= number <= high:
        raise ValueError(f"`{name}` must be between {low:g} and {high:g}, got {value!r}.")
    return number


def flag(name: str, value: Any) -> bool:
    """``value`` as a bool: only true or false (JSON), never "yes" or 1."""
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be true or false, got {value!r}."[:200])
    return value


def text(name: str, value: Any) -> str:
    """``value`` as a string (its length is the model's to check)."""
    if not isinstance(value, str):
        raise ValueError(f"`{name}` must be text, got {type(value).__name__} {value!r}."[:200])
    return value


def text_params(max_new_tokens: Any, temperature: Any, speculative: Any = False, most_tokens: int = 2**31 - 1,
                lora: Any = "", lora_scale: Any = 1.0) -> SamplingParams:
    """Sampling parameters from raw values; ``most_tokens``: the model's bound on `max_new_tokens`
    (`ModelSpec.max_new_tokens`, checked again by `check_text_request`); ``lora`` as `image_params`."""
    return SamplingParams(max_new_tokens=whole_number("max_new_tokens", max_new_tokens, 1, most_tokens),
                          temperature=number("temperature", temperature, 0, TEMPERATURE_MAX), seed=0,
                          speculative=flag("speculative", speculative), lora=text("lora", lora)[:200],
                          lora_scale=number("lora_scale", lora_scale, 0, LORA_SCALE_MAX))


def image_params(size: Any, steps: Any, seed: Any, guidance: Any, uses_guidance: bool, step_cache: Any = "off",
                 lora: Any = "", lora_scale: Any = 1.0) -> ImageParams:
    """Image parameters from raw values; ``guidance`` is checked either way (a wrong value is a wrong
    request) and kept only where the model uses it; ``step_cache``: a level (`check_image_request` knows them);
    ``lora``: an adapter id ("" for none; which ones the model offers is the model's to check)."""
    try:
        width, height = (int(v) for v in text("size", size).lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like 32x32, got {size!r}."[:200]) from None
    scale = number("guidance", guidance, 0, GUIDANCE_MAX)
    return ImageParams(height, width, whole_number("steps", steps, 1, MAX_STEPS), whole_number("seed", seed, 0, SEED_MAX),
                       scale if uses_guidance else None, text("step_cache", step_cache)[:200], text("lora", lora)[:200],
                       number("lora_scale", lora_scale, 0, LORA_SCALE_MAX))


def switches(use_aoti: Any, fp8: Any, regional: Any) -> Switches:
    """The owner's switches from the Optimization tab or `/set_optimization`, each true or false."""
    return Switches(flag("use_aoti", use_aoti), flag("fp8", fp8), flag("regional", regional))
