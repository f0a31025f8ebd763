import pytest
import torch

from diffaug.nets import DiT, build_net
from diffaug.nets.dit import sincos_2d_position_embedding
from tests.nets_helpers import one_cpu_thread  # noqa: F401 (autouse fixture)


def test_adaln_zero_blocks_start_as_identity():
    net = build_net("dit-tiny", resolution=8, num_classes=4)
    tokens, c = torch.randn(2, 16, 64), torch.randn(2, 64)
    for block in net.blocks:
        assert torch.count_nonzero(block.adaLN_modulation[-1].weight) == 0
        assert torch.equal(block(tokens, c), tokens)  # gates are zero
    assert torch.count_nonzero(net.final_layer.linear.weight) == 0


def test_unpatchify_puts_each_token_at_its_patch():
    net = build_net("dit-tiny", resolution=8, patch_size=2, in_channels=3)
    grid, p = 4, 2
    token_index = torch.arange(grid * grid, dtype=torch.float32)  # (T,)
    tokens = token_index[None, :, None].expand(1, -1, p * p * 3)  # (1, T, p*p*C): every value = its token
    image = net.unpatchify(tokens)  # (1, 3, 8, 8)
    for row in range(grid):
        for col in range(grid):
            patch = image[0, :, row * p:(row + 1) * p, col * p:(col + 1) * p]
            assert torch.all(patch == row * grid + col)


def test_unpatchify_inverts_patch_layout_channel_order():
    net = build_net("dit-tiny", resolution=8, patch_size=2, in_channels=2)
    x = torch.randn(1, 2, 8, 8)
    # (p q c) feature order, token order row-major over the grid: the inverse of unpatchify.
    tokens = x.reshape(1, 2, 4, 2, 4, 2).permute(0, 2, 4, 3, 5, 1).reshape(1, 16, 8)
    assert torch.equal(net.unpatchify(tokens), x)


def test_position_embedding_is_fixed_and_distinct():
    net = build_net("dit-tiny", resolution=8)
    assert net.pos_embed.shape == (1, 16, 64)
    assert not net.pos_embed.requires_grad
    assert "pos_embed" not in net.state_dict()  # rebuilt from the config, never loaded
    pos = sincos_2d_position_embedding(64, 4)
    distances = torch.cdist(pos, pos) + torch.eye(16) * 1e9
    assert distances.min() > 0.5
    # Tokens in the same row share the row half of the code; the same column shares the column half.
    torch.testing.assert_close(pos[0, 32:], pos[3, 32:])
    torch.testing.assert_close(pos[0, :32], pos[12, :32])


def test_learn_sigma_doubles_output_channels():
    net = build_net("dit-tiny", resolution=8, in_channels=3, learn_sigma=True)
    assert net(torch.randn(2, 3, 8, 8), torch.tensor([1.0, 2.0])).shape == (2, 6, 8, 8)


def test_patch_must_divide_resolution():
    with pytest.raises(ValueError, match=r"28 is not divisible by patch_size 8.*one of \[1, 2, 4\]"):
        DiT(resolution=28, patch_size=8, depth=1, hidden_size=32, num_heads=2)


def test_mlp_uses_tanh_gelu():
    net = build_net("dit-tiny", resolution=8)
    act = net.blocks[0].mlp.act
    assert isinstance(act, torch.nn.GELU) and act.approximate == "tanh"
    assert net.blocks[0].mlp.fc1.out_features == 4 * 64
