"""A converted DiT is a diffaug model: it fine-tunes onto a new label set (rows by name, new rows from the null
row or from a named source class, LoRA), samples and exports; class_init mistakes are named at load."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from diffaug.config import ConfigError, load_config
from diffaug.convert import CONVERTERS, ConvertOptions
from diffaug.sampling import export_augmentation_set, sample_grid
from diffaug.training import DiffusionModule, train
from tests.test_convert_dit import original_state
from tests.training_helpers import make_id_folder, one_torch_thread  # noqa: F401

pytestmark = pytest.mark.slow

TABLE = "net.cond.classes.table.weight"
SOURCE_CLASSES = ["ant", "cat", "dog"]
NEW_CLASSES = ["cat", "dog", "emu", "yak"]  # folder order (sorted)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A random tiny DiT in facebookresearch/DiT's layout (1 channel, 8x8, 3 classes), converted; a folder of
    grey 8x8 images of four classes, two of which the model knows."""
    root = tmp_path_factory.mktemp("convert-finetune")
    state = original_state(depth=2, hidden=32, heads=2, patch=2, channels=1, classes=3, resolution=8, seed=5)
    torch.save(state, root / "dit.pt")
    summary = CONVERTERS.get("dit")(root / "dit.pt", root / "dit.safetensors", progress=False,
                                    options=ConvertOptions(num_heads=2, class_names=SOURCE_CLASSES))
    folder = make_id_folder(root / "data", NEW_CLASSES, per_class=4)
    return root, summary, folder, state["y_embedder.embedding_table.weight"]


def _config(root, summary, folder, *overrides):
    return load_config([], [
        f"run_dir={root / 'run'}", "data.source=folder", f"data.path={folder}", "data.batch_size=8",
        *summary.train_overrides(), "training.max_steps=2", "training.warmup_steps=1",
        "training.checkpoint_every_n_steps=2", "training.accelerator=cpu", "training.devices=1",
        "training.ema_halflife_kimg=0.05", "sampling.steps=2", "sampling.microbatch=4", "sampling.device=cpu",
        "logging.logger=none", "logging.progress_bar=false", *overrides])


def test_new_rows_start_from_the_null_row_or_a_named_source_class(converted):
    root, summary, folder, source = converted
    cfg = _config(root, summary, folder, "training.new_class_rows=null_row", "training.class_init={emu: ant}")
    table = DiffusionModule.from_config(cfg, 4, NEW_CLASSES).denoiser.state_dict()[TABLE]
    # rows: cat, dog (kept by name), emu (from ant), yak (new: the null row), then the null row
    for row, source_row in zip(table, (source[1], source[2], source[0], source[3], source[3])):
        assert torch.equal(row, source_row)
    fresh = DiffusionModule.from_config(_config(root, summary, folder), 4, NEW_CLASSES).denoiser.state_dict()
    assert not any(torch.equal(fresh[TABLE][i], row) for i in (2, 3) for row in source)  # fresh rows


def test_class_init_mistakes_are_named_with_the_valid_names(converted):
    root, summary, folder, _ = converted
    with pytest.raises(ConfigError, match=r"'antt', which is no class of .*dit\.safetensors; valid names: "
                                          r"ant, cat, dog\. Did you mean 'ant'\?"):
        DiffusionModule.from_config(_config(root, summary, folder, "training.class_init={emu: antt}"), 4,
                                    NEW_CLASSES)
    with pytest.raises(ConfigError, match=r"'emus', which is no class of the data; valid names: cat, dog, emu, "
                                          r"yak\. Did you mean 'emu'\?"):
        DiffusionModule.from_config(_config(root, summary, folder, "training.class_init={emus: ant}"), 4,
                                    NEW_CLASSES)
    with pytest.raises(ConfigError, match=r"training\.class_init.*set training\.init_from"):
        load_config([], ["training.class_init={emu: ant}"])


def test_converted_dit_finetunes_with_lora_on_a_new_label_set_then_samples_and_exports(converted):
    root, summary, folder, _ = converted
    result = train(_config(root, summary, folder, "training.lora_rank=2", "training.class_init={emu: ant}"))
    grid = sample_grid(result.weights, root / "grid.png", per_class=2)
    assert Image.open(grid).size[1] > 4 * 8  # four class rows of 8-pixel images
    export = export_augmentation_set(result.weights, ["export.per_class=2", f"export.out_dir={root / 'set'}"],
                                     progress=False)
    assert export.class_names == tuple(NEW_CLASSES) and export.finalized
    images = sorted(p.relative_to(root / "set").parts[-2] for p in (root / "set").rglob("*.png"))
    assert images == sorted(NEW_CLASSES * 2)
