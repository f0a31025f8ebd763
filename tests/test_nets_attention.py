import pytest
import torch

from diffaug.nets import ATTENTION_BACKENDS, MultiHeadSelfAttention, attention
from diffaug.nets.attention import xformers_available
from tests.nets_helpers import one_cpu_thread  # noqa: F401 (autouse fixture)


def qkv(n=2, heads=3, length=17, head_dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, heads, length, head_dim, generator=generator) for _ in range(3)]


def test_sdpa_matches_math_reference():
    q, k, v = qkv()
    out_sdpa = attention(q, k, v, backend="sdpa")
    out_math = attention(q, k, v, backend="math")
    assert out_sdpa.shape == (2, 3, 17, 8)
    torch.testing.assert_close(out_sdpa, out_math, atol=1e-5, rtol=1e-5)
    # Keys/values of another length than the queries.
    (q,), (k, v) = qkv(length=5)[:1], qkv(length=11, seed=1)[:2]
    torch.testing.assert_close(attention(q, k, v, "sdpa"), attention(q, k, v, "math"), atol=1e-5, rtol=1e-5)


def test_math_attention_is_softmax_weighted_average_of_values():
    # One query, two keys: the weights are a two-way softmax that can be written down by hand.
    q = torch.tensor([[[[1.0, 0.0]]]])  # (1, 1, 1, 2)
    k = torch.tensor([[[[2.0, 0.0], [0.0, 0.0]]]])  # (1, 1, 2, 2)
    v = torch.tensor([[[[10.0, 0.0], [0.0, 10.0]]]])
    w = torch.softmax(torch.tensor([2.0, 0.0]) / 2**0.5, dim=0)
    expected = torch.tensor([10 * w[0], 10 * w[1]])
    for backend in ("math", "sdpa"):
        torch.testing.assert_close(attention(q, k, v, backend=backend)[0, 0, 0], expected)


def test_attention_rows_are_independent_per_head():
    # Changing head 0's values must leave head 1's output untouched.
    q, k, v = qkv()
    v2 = v.clone()
    v2[:, 0] += 1.0
    out, out2 = attention(q, k, v, "math"), attention(q, k, v2, "math")
    torch.testing.assert_close(out[:, 1:], out2[:, 1:])
    assert (out[:, 0] - out2[:, 0]).abs().min() > 0.99  # softmax weights sum to 1: every output moves by 1


def test_module_sdpa_matches_math():
    torch.manual_seed(0)
    a = MultiHeadSelfAttention(dim=32, num_heads=4, backend="sdpa")
    b = MultiHeadSelfAttention(dim=32, num_heads=4, backend="math")
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 10, 32)
    torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-5)


def test_unknown_backend_lists_valid_choices():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="valid backends: sdpa, xformers, math"):
        attention(q, k, v, backend="flash")
    with pytest.raises(ValueError, match="valid backends"):
        MultiHeadSelfAttention(dim=8, num_heads=2, backend="flash")
    assert ATTENTION_BACKENDS == ("sdpa", "xformers", "math")


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        MultiHeadSelfAttention(dim=10, num_heads=3)


def test_bad_shapes_are_rejected():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"q \(N, heads, L, head_dim\)"):
        attention(q[0], k[0], v[0])


@pytest.mark.skipif(xformers_available(), reason="the missing-xformers error only exists without xformers")
def test_xformers_missing_gives_install_hint():
    with pytest.raises(ImportError, match=r"pip install diffaug\[xformers\]"):
        MultiHeadSelfAttention(dim=8, num_heads=2, backend="xformers")


def test_xformers_on_cpu_tensor_is_refused():
    q, k, v = qkv()
    with pytest.raises(RuntimeError, match="only on CUDA tensors.*sdpa"):
        attention(q, k, v, backend="xformers")
