"""Fine-tuning a model trained on one class set to another: rows by class name, LoRA merged on export."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file

from diffaug.inference import load_for_inference
from diffaug.training import DiffusionModule, train
from tests.training_helpers import make_id_folder, one_torch_thread, state_of, tiny_config  # noqa: F401

pytestmark = pytest.mark.slow

TABLE = "net.cond.classes.table.weight"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A model trained 2 steps on classes ant, cat, dog; and a folder of classes cat, dog, emu."""
    root = tmp_path_factory.mktemp("finetune")
    old = make_id_folder(root / "old", ["ant", "cat", "dog"], per_class=8)
    new = make_id_folder(root / "new", ["cat", "dog", "emu"], per_class=8)
    result = train(tiny_config(root / "source", "data.source=folder", f"data.path={old}",
                               "training.max_steps=2", "training.checkpoint_every_n_steps=2"))
    return root, new, result


def _finetune_config(root, new, init_from, *overrides):
    return tiny_config(root / "target", "data.source=folder", f"data.path={new}",
                       f"training.init_from={init_from}", "training.max_steps=2",
                       "training.checkpoint_every_n_steps=2", *overrides)


def test_initialisation_keeps_rows_by_class_name(source, caplog):
    root, new, result = source
    src = state_of(result.last_checkpoint, "ema.module.")
    with caplog.at_level(logging.WARNING, logger="diffaug.training.finetune"):
        module = DiffusionModule.from_config(_finetune_config(root, new, result.last_checkpoint), 3,
                                             ["cat", "dog", "emu"])
    state = module.denoiser.state_dict()
    table, src_table = state[TABLE], src[TABLE]  # rows: classes, then the null class
    assert torch.equal(table[0], src_table[1]) and torch.equal(table[1], src_table[2])  # cat, dog moved
    assert torch.equal(table[3], src_table[3])  # null class
    assert not any(torch.equal(table[2], row) for row in src_table)  # emu: fresh
    assert all(torch.equal(state[k], src[k]) for k in src if k != TABLE)  # everything else loaded
    ema = module.ema.module.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in ema.items())  # the EMA starts there
    assert "['emu']" in caplog.text and "['ant']" in caplog.text


def test_freeze_prefixes_leave_frozen_weights_out_of_the_optimizer(source):
    root, new, result = source
    cfg = _finetune_config(root, new, result.weights, "training.freeze=[net.down_blocks., net.cond.noise.]")
    module = DiffusionModule.from_config(cfg, 3, ["cat", "dog", "emu"])
    frozen = [n for n, p in module.denoiser.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("net.down_blocks.", "net.cond.noise.")) for n in frozen)
    optimized = {id(p) for g in module.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
    assert optimized == {id(p) for p in module.denoiser.parameters() if p.requires_grad}


def test_lora_finetune_trains_adapters_and_exports_merged_weights(source):
    root, new, result = source
    src = state_of(result.last_checkpoint, "ema.module.")
    tuned = train(_finetune_config(root, new, result.last_checkpoint, "training.lora_rank=2"))
    assert tuned.best_checkpoint.name == "step=0000002.ckpt"  # no validation data: top-k by step
    live = state_of(tuned.last_checkpoint, "denoiser.")
    lora_ups = [k for k in live if k.endswith("lora_up.weight")]
    assert lora_ups and any(live[k].abs().max() > 0 for k in lora_ups)  # adapters trained (start at zero)
    bases = [k for k in live if k.endswith(".base.weight")]
    assert bases and all(torch.equal(live[k], src[k.replace(".base.weight", ".weight")]) for k in bases)
    assert not torch.equal(live[TABLE][2], src[TABLE][2])  # the class table trains too

    exported = load_file(tuned.weights)
    assert not any("lora" in k or ".base." in k for k in exported)
    from_ckpt, _, _, class_map = load_for_inference(tuned.last_checkpoint)
    from_weights, _, _, _ = load_for_inference(tuned.weights)
    assert class_map.names == ("cat", "dog", "emu")
    x_t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t, labels = torch.tensor([100.0, 500.0, 900.0]), torch.tensor([0, 2, 3])
    with torch.no_grad():
        merged, adapted = from_weights(x_t, t, labels), from_ckpt(x_t, t, labels)
    torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-5)


def test_unlabelled_pretraining_then_kshot_finetuning_starts_from_the_unconditional_model(tmp_path):
    """data.unlabelled trains an unconditional model; fine-tuned on labelled classes, the new class rows are zero,
    so before any step the conditional model predicts exactly what the unconditional one did, for every class."""
    folder = make_id_folder(tmp_path / "pool", ["cat", "dog", "emu"], per_class=8)
    pool = train(tiny_config(tmp_path / "pool-run", "data.source=folder", f"data.path={folder}", "data.unlabelled=true",
                             "training.max_steps=2", "training.checkpoint_every_n_steps=2"))
    pretrained = DiffusionModule.from_config(tiny_config(tmp_path / "p", "data.source=folder",
                                                         f"data.path={folder}", "data.unlabelled=true"),
                                             None, ["all"])
    pretrained.denoiser.load_state_dict(state_of(pool.last_checkpoint, "ema.module."))
    assert not any(k.endswith("classes.table.weight") for k in pretrained.denoiser.state_dict())  # unconditional
    module = DiffusionModule.from_config(_finetune_config(tmp_path, folder, pool.last_checkpoint), 3,
                                         ["cat", "dog", "emu"])
    assert torch.equal(module.denoiser.state_dict()[TABLE], torch.zeros(4, module.denoiser.state_dict()[TABLE].shape[1]))
    x, t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.full((4,), 300)
    with torch.no_grad():
        expected = pretrained.denoiser.eval()(x, t, None)
        got = module.denoiser.eval()(x, t, torch.tensor([0, 1, 2, 3]))  # three classes and the null class
    assert torch.allclose(got, expected, atol=1e-6)
