"""engines: what model runs where, and how. `Studio` is the one facade the app talks to; the rest is
exported for the app's types and for tests."""

from . import inputs
from .device import DeviceInfo
from .image import ImageParams, ImageResult
from .recipes import Recipe, Switches
from .select import Decision
from .state import ModelState, Phase
from .studio import Studio
from .text import SamplingParams, TextStep
from .workers import Binding, RunReport

__all__ = ["Studio", "inputs", "Switches", "Recipe", "ModelState", "Phase", "SamplingParams", "ImageParams", "ImageResult",
           "TextStep", "Decision", "DeviceInfo", "Binding", "RunReport"]
