"""One sampling path: the training sample grid, the quality monitor and ``diffaug sample`` draw the same images
from the same weights and seeds."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from diffaug.cli import main
from diffaug.sampling import load_model
from diffaug.training import train
from diffaug.training.quality_monitor import quality_samples
from tests.training_helpers import one_torch_thread, tiny_config  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.slow


def _cells(png: bytes, rows: int, cols: int, size: int = 8, pad: int = 2) -> np.ndarray:
    grid = np.asarray(Image.open(io.BytesIO(png)))  # (H', W') grey
    assert grid.shape == (rows * (size + pad) + pad, cols * (size + pad) + pad)
    return np.stack([
        np.stack([grid[pad + r * (size + pad):][:size, pad + c * (size + pad):][:, :size] for c in range(cols)])
        for r in range(rows)
    ])  # (rows, cols, size, size)


def test_training_grid_equals_diffaug_sample_and_the_quality_monitor_draws_its_cells(tmp_path):
    cfg = tiny_config(
        tmp_path / "run", "training.max_steps=4", "training.sample_every_n_steps=4", "sampling.sampler=ddim",
        "sampling.steps=2", "sampling.device=cpu", "sampling.batch_size=7", "sampling.microbatch=4",
    )
    result = train(cfg)
    trained = (result.run_dir / "samples" / "step_0000004.png").read_bytes()  # drawn from the EMA at step 4

    # The same grid, byte for byte, from the weights the run saved at that step, whatever the batch size.
    for checkpoint, extra in ((result.weights, []), (result.last_checkpoint, ["sampling.batch_size=80"])):
        out = tmp_path / f"{checkpoint.stem}.png"
        assert main(["sample", str(checkpoint), *extra, "--out", str(out)]) == 0
        assert out.read_bytes() == trained

    cells = _cells(trained, rows=10, cols=8)  # 10 digit classes, 8 per class
    assert len({cell.tobytes() for row in cells for cell in row}) == 80  # 80 different images, not noise-free
    # The quality monitor's image i is image i // 10 of class i % 10: the grid's cell (i % 10, i // 10).
    model = load_model(result.weights)
    images, labels = quality_samples(model.denoiser, n=25, class_names=model.class_map.names,
                                     settings=model.settings, device=torch.device("cpu"))
    assert labels.tolist() == [i % 10 for i in range(25)]
    for i in range(25):
        assert np.array_equal(images[i, 0].numpy(), cells[i % 10, i // 10]), f"quality sample {i}"
