"""Triton kernels, each with its `torch.library` op registration and a plain-PyTorch reference.

The bottom layer of `aoti`: nothing here imports anything above it (transforms, passes, the core).
Every op is a `torch.library.triton_op`, so `torch.export` traces the kernel itself and AOTInductor
compiles it into the package. Where Triton is not installed the ops are absent and `support.available`
says so; callers keep their plain path.

| module | op | serves |
|---|---|---|
| `gemv` | `aoti_studio::gemv` | one-row products (LLM decode), bf16/fp16/e4m3 weights, optional norm/residual/SiLU·mul |
| `decode_attention` | `aoti_studio::decode_attention` | a grouped-query decode step's attention, split over the KV cache |
| `fp8_attention` | `aoti_studio::fp8_attention` | softmax attention with e4m3 operands (diffusion transformers) |
| `fp8_rows` | `aoti_studio::rowwise_fp8` | per-row e4m3 quantization of wide rows in one pass |
| `norm_rope` | `aoti_studio::norm_rope(_fp8)` | per-head RMS norm + rotary embedding of q/k in one pass |
| `fp8` | — | the e4m3 arithmetic they share, and which GPUs have FP8 tensor cores |
"""
