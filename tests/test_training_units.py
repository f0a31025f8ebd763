"""Unit tests of the training pieces that need no Trainer: EMA, LR schedule, data order, LoRA, class remap,
checkpoint safety."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from diffaug.checkpoint import CheckpointError, read_lightning_checkpoint
from diffaug.inference import load_for_inference
from diffaug.nets.lora import LoRALinear, add_lora, merge_lora_state_dict
from diffaug.training.data import ResumableBatchSampler
from diffaug.training.ema import EMA, ema_beta
from diffaug.training.finetune import freeze_prefixes, remap_class_table
from diffaug.training.schedule import build_lr_scheduler, lr_factor
from tests.training_helpers import one_torch_thread  # noqa: F401  (autouse fixture)

# ---------------------------------------------------------------- EMA


def test_ema_beta_is_a_half_life_in_images():
    # Without ramp-up: after halflife_kimg * 1000 images at any batch size, the old average weighs 1/2.
    for batch in (16, 64, 250):
        beta = ema_beta(batch_images=batch, images_seen=1e9, halflife_kimg=2.0, rampup=None)
        steps = 2000 / batch
        assert beta**steps == pytest.approx(0.5, rel=1e-9)


def test_ema_rampup_caps_the_half_life_by_images_seen():
    # 1000 images seen, rampup 0.05 -> half-life 50 images, not 10k.
    beta = ema_beta(batch_images=10, images_seen=1000, halflife_kimg=10.0, rampup=0.05)
    assert beta == pytest.approx(0.5 ** (10 / 50))
    # Nothing seen yet: beta 0, the average jumps to the current weights.
    assert ema_beta(batch_images=10, images_seen=0, halflife_kimg=10.0, rampup=0.05) == 0.0


def test_ema_update_matches_the_formula_and_counts_images():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(net, halflife_kimg=0.001, rampup=None)  # half-life 1 image
    old = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net[1].running_mean.fill_(3.0)
    beta = ema.update(net, batch_images=2)
    assert beta == pytest.approx(0.25)
    for name, p in net.named_parameters():
        expected = beta * old[name] + (1 - beta) * p.detach()
        torch.testing.assert_close(ema.module.state_dict()[name], expected, rtol=0, atol=1e-6)
    assert torch.equal(ema.module[1].running_mean, torch.full((4,), 3.0))  # buffers copied
    assert float(ema.images_seen) == 2.0
    assert not any(p.requires_grad for p in ema.parameters())


def test_ema_rejects_bad_settings():
    with pytest.raises(ValueError, match="halflife_kimg"):
        EMA(nn.Linear(1, 1), halflife_kimg=-1, rampup=None)
    with pytest.raises(ValueError, match="rampup"):
        EMA(nn.Linear(1, 1), halflife_kimg=1, rampup=0.0)


# ---------------------------------------------------------------- learning-rate schedule


def test_warmup_then_cosine_to_min_ratio():
    kw = dict(warmup_steps=4, max_steps=14, schedule="cosine", min_lr_ratio=0.1)
    assert [lr_factor(s, **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, **kw) == pytest.approx(1.0)
    assert lr_factor(9, **kw) == pytest.approx(0.55)  # half way: (1 + 0.1) / 2
    assert lr_factor(14, **kw) == pytest.approx(0.1)
    assert lr_factor(100, **kw) == pytest.approx(0.1)
    assert lr_factor(50, warmup_steps=0, max_steps=10, schedule="constant", min_lr_ratio=0.1) == 1.0


def test_scheduler_drives_the_optimizer_and_rejects_unknown_schedules():
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_lr_scheduler(opt, warmup_steps=2, max_steps=4, schedule="cosine", min_lr_ratio=0.0)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="constant, cosine"):
        build_lr_scheduler(opt, warmup_steps=0, max_steps=4, schedule="linear", min_lr_ratio=0.0)


# ---------------------------------------------------------------- resumable data order


def test_sampler_splits_each_epoch_across_ranks_and_reshuffles():
    ranks = [ResumableBatchSampler(24, batch_size=4, seed=3, rank=r, world_size=2) for r in range(2)]
    epoch0 = [list(s) for s in ranks]
    assert len(epoch0[0]) == len(epoch0[1]) == 3
    seen = [i for batches in epoch0 for batch in batches for i in batch]
    assert sorted(seen) == list(range(24))  # disjoint and complete
    for s in ranks:
        s.set_epoch(1)
    epoch1 = [list(s) for s in ranks]
    assert epoch1 != epoch0
    assert sorted(i for b in epoch1 for batch in b for i in batch) == list(range(24))
    assert [list(s) for s in ranks] == epoch1  # same epoch -> same order


def test_sampler_wraps_around_to_fill_the_last_batch():
    sampler = ResumableBatchSampler(10, batch_size=4, seed=0)
    batches = list(sampler)
    assert [len(b) for b in batches] == [4, 4, 4]
    flat = [i for b in batches for i in b]
    assert set(flat) == set(range(10)) and flat[10:] == flat[:2]


def test_sampler_resumes_mid_epoch_and_at_epoch_end():
    full = ResumableBatchSampler(40, batch_size=4, seed=1)
    full.set_epoch(2)
    order = list(full)
    resumed = ResumableBatchSampler(40, batch_size=4, seed=1)
    resumed.resume_at(epoch=2, batches_done=3)
    assert list(resumed) == order[3:]
    assert list(resumed) == order  # the skip applies to one iteration only
    resumed.resume_at(epoch=2, batches_done=len(resumed))  # a checkpoint that closed epoch 2
    full.set_epoch(3)
    assert resumed.epoch == 3 and list(resumed) == list(full)


# ---------------------------------------------------------------- LoRA and fine-tuning helpers


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(6, 18)
        self.attn.proj = nn.Linear(6, 6)
        self.other = nn.Linear(6, 6)

    def forward(self, x):
        return self.other(self.attn.proj(self.attn.qkv(x)[..., :6]))


def test_lora_starts_as_identity_update_and_merges_exactly():
    torch.manual_seed(0)
    block = _Block()
    x = torch.randn(5, 6)
    before = block(x)
    adapted = add_lora(block, rank=2)
    assert sorted(adapted) == ["attn.proj", "attn.qkv"]
    assert isinstance(block.attn.qkv, LoRALinear) and isinstance(block.other, nn.Linear)
    torch.testing.assert_close(block(x), before, rtol=0, atol=0)
    trainable = sorted(n for n, p in block.named_parameters() if p.requires_grad)
    assert trainable == ["attn.proj.lora_down.weight", "attn.proj.lora_up.weight",
                         "attn.qkv.lora_down.weight", "attn.qkv.lora_up.weight", "other.bias", "other.weight"]
    with torch.no_grad():
        block.attn.qkv.lora_up.weight.normal_()
        block.attn.proj.lora_up.weight.normal_()
    after = block(x)
    assert (after - before).abs().max() > 1e-2
    plain = _Block()
    plain.load_state_dict(merge_lora_state_dict(block.state_dict()), strict=True)
    torch.testing.assert_close(plain(x), after, rtol=1e-5, atol=1e-5)


def test_lora_needs_target_layers():
    with pytest.raises(ValueError, match="no linear layers matching"):
        add_lora(nn.Sequential(nn.Linear(2, 2)), rank=2)


def test_class_table_rows_are_remapped_by_name():
    old = torch.arange(4 * 3, dtype=torch.float32).view(4, 3)  # classes a, b, c + null
    new = torch.full((4, 3), -1.0)  # classes c, d, a + null
    table, report = remap_class_table(old, new, ["a", "b", "c"], ["c", "d", "a"])
    assert torch.equal(table[0], old[2]) and torch.equal(table[2], old[0])  # c and a kept
    assert torch.equal(table[1], new[1])  # d keeps its fresh initialisation
    assert torch.equal(table[3], old[3])  # null class kept
    assert report == {"kept": ["c", "a"], "initialised": ["d"], "from_class": [], "dropped": ["b"]}
    with pytest.raises(ValueError, match="one row per class plus the null class"):
        remap_class_table(old, new, ["a", "b"], ["c", "d", "a"])


def test_freeze_prefixes_and_unknown_prefix_error():
    block = _Block()
    frozen = freeze_prefixes(block, ["attn."])
    assert sorted(frozen) == ["attn.proj.bias", "attn.proj.weight", "attn.qkv.bias", "attn.qkv.weight"]
    assert block.other.weight.requires_grad
    with pytest.raises(ValueError, match="matches no parameter"):
        freeze_prefixes(block, ["encoder."])


# ---------------------------------------------------------------- checkpoint safety


class _WritesMarker:
    """Unpickling this calls Path.touch(marker): code execution on load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("payload_place", ["top", "inside_state_dict"])
def test_a_checkpoint_that_runs_code_on_load_is_refused(tmp_path, payload_place):
    marker = tmp_path / "pwned"
    evil = _WritesMarker(marker)
    if payload_place == "top":
        content = {"diffaug": {"config": {}, "class_names": ["a"]}, "evil": evil}
    else:
        content = {"diffaug": {"config": {}, "class_names": ["a"]}, "state_dict": {"ema.module.w": evil}}
    path = tmp_path / "evil.ckpt"
    torch.save(content, path)
    # Prove the file is really malicious: a plain unpickle creates the marker.
    with open(path, "rb") as f:
        torch.load(f, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_for_inference(path)
    assert not marker.exists()


def test_not_a_diffaug_checkpoint(tmp_path):
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="not a diffaug checkpoint"):
        read_lightning_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_for_inference(tmp_path / "missing.ckpt")
    truncated = tmp_path / "cut.ckpt"
    torch.save({"diffaug": {"config": {}, "class_names": ["a"]}, "w": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_lightning_checkpoint(truncated)


def test_the_optimizer_is_torchs_fused_adamw_where_it_runs():
    from diffaug.config import load_config
    from diffaug.training import DiffusionModule

    cfg = load_config([], ["model.args={model_channels: 16, channel_mult: [1], norm_groups: 8}"])
    optimizer = DiffusionModule.from_config(cfg, None, ["all"]).configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW)
    if torch.__version__ >= "2.4":  # where CPUs got the fused kernel
        assert optimizer.defaults["fused"]
