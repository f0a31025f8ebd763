"""The one attention function behind every network, and the multi-head self-attention module built on it.

Layout everywhere: q, k, v and the result are (N, heads, length, head_dim), PyTorch's SDPA layout.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Literal, get_args

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

AttentionBackend = Literal["sdpa", "xformers", "math"]
ATTENTION_BACKENDS: tuple[str, ...] = get_args(AttentionBackend)

XFORMERS_INSTALL_HINT = "install it with `pip install diffaug[xformers]` or use attn_backend='sdpa'"


def xformers_available() -> bool:
    return importlib.util.find_spec("xformers") is not None


def _unknown_backend(backend: str) -> ValueError:
    valid = ", ".join(ATTENTION_BACKENDS)
    return ValueError(f"unknown attention backend {backend!r}; valid backends: {valid}")


def check_backend(backend: str) -> None:
    """Fail early (at construction) on an unknown backend or on xformers when it is not installed."""
    if backend not in ATTENTION_BACKENDS:
        raise _unknown_backend(backend)
    if backend == "xformers" and not xformers_available():
        raise ImportError(f"attention backend 'xformers' requested but xformers is not installed; "
                          f"{XFORMERS_INSTALL_HINT}")


def math_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Reference softmax(q k^T / sqrt(d)) v, computed in float32."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = torch.einsum("nhqd,nhkd->nhqk", q.float(), k.float()) * scale  # (N, h, L, L)
    out = torch.einsum("nhqk,nhkd->nhqd", logits.softmax(dim=-1), v.float())  # (N, h, L, d)
    return out.to(q.dtype)


def _xformers_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    if q.device.type != "cuda":
        raise RuntimeError(
            f"xformers attention kernels run only on CUDA tensors, got a {q.device.type} tensor; "
            "use attn_backend='sdpa' (or 'math') off the GPU"
        )
    check_backend("xformers")
    import xformers.ops as xops

    # xformers wants (N, L, heads, d).
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    return xops.memory_efficient_attention(q, k, v).transpose(1, 2)  # (N, h, L, d_v)


def attention(q: Tensor, k: Tensor, v: Tensor, backend: AttentionBackend = "sdpa") -> Tensor:
    """softmax(q k^T / sqrt(d)) v for q (N, heads, L, d), k (N, heads, S, d), v (N, heads, S, d_v).

    Returns (N, heads, L, d_v). Backends:
    "sdpa": F.scaled_dot_product_attention (flash / memory-efficient kernels on GPU);
    "xformers": xformers.ops.memory_efficient_attention (CUDA only, optional dependency);
    "math": the plain reference, for tests.
    """
    four_d = all(t.ndim == 4 for t in (q, k, v))
    if not four_d or k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3] or v.shape[:3] != k.shape[:3]:
        raise ValueError(
            "attention expects q (N, heads, L, head_dim), k (N, heads, S, head_dim), v (N, heads, S, d_v); "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if backend == "xformers":
        return _xformers_attention(q, k, v)
    if backend == "math":
        return math_attention(q, k, v)
    raise _unknown_backend(backend)


# LoRA targets of a network whose attention layers are MultiHeadSelfAttention modules named ``attn``: the
# qkv and output projections.
ATTENTION_LORA_TARGETS: tuple[str, ...] = (r"(^|\.)attn\.(qkv|proj)$",)


class MultiHeadSelfAttention(nn.Module):
    """qkv projection -> attention over the L tokens -> output projection; (N, L, dim) -> (N, L, dim)."""

    def __init__(self, *, dim: int, num_heads: int, backend: AttentionBackend = "sdpa",
                 qkv_bias: bool = True):
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"attention width {dim} must be divisible by num_heads, got {num_heads}")
        check_backend(backend)
        self.num_heads = num_heads
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:  # (N, L, dim)
        q, k, v = rearrange(self.qkv(x), "n l (three h d) -> three n h l d", three=3, h=self.num_heads)
        out = attention(q, k, v, backend=self.backend)  # (N, h, L, d)
        return self.proj(rearrange(out, "n h l d -> n l (h d)"))  # (N, L, dim)
