"""The e4m3 arithmetic the FP8 kernels and layers share, and which devices have FP8 tensor cores."""

from __future__ import annotations

import torch

FP8_MIN_CAPABILITY = (8, 9)
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448
SCALE_FLOOR = 1e-12  # an all-zero row gets this scale, not 0 (no division by zero)


def fp8_scaled(x: torch.Tensor, amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` in e4m3 with float32 scales ``amax / 448`` (``amax`` broadcasts against ``x``):
    ``x ≈ values * scale``."""
    scale = amax.float().clamp(min=SCALE_FLOOR) / FP8_MAX
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def fp8_capable(device: torch.device) -> bool:
    """Whether ``device`` has FP8 tensor cores (CUDA compute capability 8.9 or newer)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= FP8_MIN_CAPABILITY


def fp8_unsupported(device: torch.device) -> str | None:
    """Why ``device`` has no FP8 tensor cores ("needs ..."), or None where it has them."""
    if device.type != "cuda":
        return f"needs a CUDA GPU; this device is the {device.type.upper()}"
    if not fp8_capable(device):
        major, minor = torch.cuda.get_device_capability(device)
        return f"needs compute capability >= 8.9; this GPU has {major}.{minor}"
    return None


SCALINGS = ("row", "tensor")  # `torch._scaled_mm`'s scale layouts we use: one per row of each operand, or one each
_SELF_TESTED: dict[tuple[str, int | None, str], str | None] = {}


def scaled_mm_fails(device: torch.device, scaling: str = "row") -> str | None:
    """Why `torch._scaled_mm` with ``scaling`` scales does not work on ``device`` (None where it does),
    found by running it once (per device, scaling and process) on a small product against its float
    reference. A GPU generation can lack a layout its capability suggests: row-wise scales fail on
    RTX PRO Blackwell (sm_120) with CUBLAS_STATUS_NOT_SUPPORTED in some torch builds (pytorch issue
    192707) while per-tensor scales work; only trying tells."""
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    key = (device.type, device.index, scaling)
    if key not in _SELF_TESTED:
        _SELF_TESTED[key] = _self_test(device, scaling)
    return _SELF_TESTED[key]


def _self_test(device: torch.device, scaling: str) -> str | None:
    generator = torch.Generator().manual_seed(0)
    a, w = (torch.randn(shape, generator=generator).to(device) for shape in ((32, 64), (48, 64)))
    dims = -1 if scaling == "row" else (0, 1)
    (qa, sa), (qw, sw) = (fp8_scaled(t, t.abs().amax(dims, keepdim=True)) for t in (a, w))
    out_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        out = torch._scaled_mm(qa, qw.t(), scale_a=sa, scale_b=sw.t().contiguous(), out_dtype=out_dtype, use_fast_accum=True)
        reference = a @ w.t()
        error = float((out.float() - reference).norm() / reference.norm())
    except Exception as exc:  # an unsupported layout raises in the library (cuBLAS, CUTLASS)
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
    if not error < 0.1:  # e4m3 rounds to about 3 %: anything far past it is a broken kernel
        return f"wrong results (relative error {error:.3g} against the float product)"
    return None
