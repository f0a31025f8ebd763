import pytest
import torch

from diffaug.nets import ClassEmbedding, ConditionEmbedding, sinusoidal_embedding
from tests.nets_helpers import one_cpu_thread  # noqa: F401 (autouse fixture)


def test_sinusoidal_codes_are_bounded_and_distinct_over_minus_1000_to_1000():
    values = torch.arange(-1000, 1001, dtype=torch.float32)  # every integer level, both signs
    codes = sinusoidal_embedding(values, 128)  # (2001, 128)
    assert codes.shape == (2001, 128)
    assert codes.abs().max() <= 1.0
    distances = torch.cdist(codes, codes) + torch.eye(len(values)) * 1e9
    # Neighbouring integers differ through the fast frequencies; no two levels collide anywhere.
    assert distances.min() > 0.5


def test_sinusoidal_embedding_separates_fractional_levels():
    codes = sinusoidal_embedding(torch.tensor([0.0, 0.25, 0.5, 999.5, 1000.0]), 64)
    distances = torch.cdist(codes, codes) + torch.eye(5) * 1e9
    assert distances.min() > 0.1


def test_sinusoidal_embedding_is_float32_for_low_precision_inputs():
    # 992 is exact in bfloat16; its products with the frequencies are not, so they must be taken in float32.
    exact = sinusoidal_embedding(torch.tensor([992.0]), 64)
    from_bf16 = sinusoidal_embedding(torch.tensor([992.0], dtype=torch.bfloat16), 64)
    assert from_bf16.dtype == torch.float32
    torch.testing.assert_close(from_bf16, exact)


def test_class_embedding_has_null_row():
    embedding = ClassEmbedding(num_classes=10, embed_dim=16)
    assert embedding.table.num_embeddings == 11
    assert embedding.null_class == 10
    rows = embedding(torch.tensor([0, 10]))
    assert not torch.equal(rows[0], rows[1])


def test_condition_embedding_validates_inputs():
    conditional = ConditionEmbedding(frequency_dim=32, embed_dim=16, num_classes=10)
    level = torch.tensor([1.0, 2.0])
    assert conditional(level, torch.tensor([3, 10]), 2).shape == (2, 16)
    with pytest.raises(ValueError, match=r"lie in \[0, 10\].*null class"):
        conditional(level, torch.tensor([3, 11]), 2)
    with pytest.raises(ValueError, match=r"torch.full\(\(N,\), 10\)"):
        conditional(level, None, 2)
    with pytest.raises(TypeError, match="int64"):
        conditional(level, torch.tensor([3.0, 1.0]), 2)
    with pytest.raises(ValueError, match=r"noise_level must have shape \(N,\)"):
        conditional(torch.tensor(1.0), torch.tensor([3, 1]), 2)
    with pytest.raises(ValueError, match="num_classes must be None, 0"):
        ConditionEmbedding(frequency_dim=32, embed_dim=16, num_classes=-1)


def test_unconditional_embedding_ignores_labels():
    unconditional = ConditionEmbedding(frequency_dim=32, embed_dim=16, num_classes=None)
    level = torch.tensor([1.0, 500.0])
    with_labels = unconditional(level, torch.tensor([0, 5]), 2)
    torch.testing.assert_close(with_labels, unconditional(level, None, 2))
    # Integer (discrete) time steps are accepted and mean the same as their float values.
    torch.testing.assert_close(unconditional(torch.tensor([1, 500]), None, 2), with_labels)
