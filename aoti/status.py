"""Status records: what runs now and why, returned by every compile, load and apply."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Runtime = Literal["aoti", "torch.compile", "eager"]


@dataclass
class Status:
    """One step's outcome, plain data for the engines, the UI and the API.

    ``fallbacks`` lists every downgrade with its reason (e.g. "Float8Rowwise -> skipped: FP8 needs a CUDA GPU").
    ``guard_fallbacks`` is filled in live by the swapped forward: calls sent to eager by the shape guard.
    """

    runtime: Runtime = "eager"
    reason: str = ""
    key: str | None = None
    cache_hit: bool | None = None
    compile_s: float | None = None
    load_s: float | None = None
    artifact_bytes: int | None = None
    graphs: int = 0
    quantization: str = "none"
    transforms: list[str] = field(default_factory=list)  # what `aoti.transform` rewrote, one line each
    cuda_graphs: int = 0  # graphs replayed as CUDA graphs
    fallbacks: list[str] = field(default_factory=list)
    guard_fallbacks: int = 0
    compiled_calls: int = 0
    layout_copies: int = 0  # inputs of a compiled call copied into the layout its graph was built for
    last_guard_reason: str | None = None
    measured: dict[str, Any] | None = None  # compiled against eager on the module's inputs (`aoti.Speedup.to_dict`)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def merge(self, other: Status) -> Status:
        """Combine the records of parts (regional blocks) into one."""
        self.compile_s = (self.compile_s or 0.0) + (other.compile_s or 0.0)
        self.load_s = (self.load_s or 0.0) + (other.load_s or 0.0) if other.load_s is not None else self.load_s
        self.artifact_bytes = (self.artifact_bytes or 0) + (other.artifact_bytes or 0)
        self.graphs += other.graphs
        self.cache_hit = other.cache_hit if self.cache_hit is None else (self.cache_hit and bool(other.cache_hit))
        self.fallbacks.extend(f for f in other.fallbacks if f not in self.fallbacks)
        return self
