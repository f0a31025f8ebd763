"""Images depend on their seed, class and guidance only: never on the batch they are sampled in."""

import logging

import pytest
import torch

from diffaug.augset.plan import build_items
from diffaug.config import ConfigError
from diffaug.sampling.fixed_shape import FixedShapeDenoiser
from diffaug.sampling.generate import autocast_for, generate_images, resolve_device
from tests.export_helpers import make_checkpoint, one_cpu_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from diffaug.inference import load_for_inference

    path = make_checkpoint(tmp_path_factory.mktemp("ckpt"), class_names=("a", "b", "c"))
    denoiser, process, _, _ = load_for_inference(path)
    return denoiser, process


def _float_samples(denoiser, process, items, batch_size, **kwargs):
    from diffaug.diffusion import sample

    out = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        out.append(
            sample(
                "ddim",
                FixedShapeDenoiser(denoiser, 4),
                process,
                shape=(len(chunk), 1, 8, 8),
                seeds=[it.seed for it in chunk],
                class_labels=torch.tensor([it.class_index for it in chunk]),
                steps=20,
                guidance_scale=torch.tensor([it.guidance for it in chunk]),
                **kwargs,
            )
        )
    return torch.cat(out)  # (N, 1, 8, 8) float


def test_fixed_shape_calls_make_floats_batch_independent(model):
    denoiser, process = model
    items = build_items([7, 7, 7], base_seed=1, guidance=[2.0, 2.0, 2.0])
    by_batch = {bs: _float_samples(denoiser, process, items, bs) for bs in (1, 5, 16, 21)}
    for bs, x in by_batch.items():
        assert torch.equal(x, by_batch[1]), f"batch size {bs} changed the floats"
    assert by_batch[1].std() > 0.1  # real, varied images


def test_fixed_shape_pads_and_passes_the_null_class(model):
    denoiser, _ = model
    wrapped = FixedShapeDenoiser(denoiser, 4)
    assert wrapped.null_class == denoiser.null_class == 3
    x, t, y = torch.randn(6, 1, 8, 8), torch.full((6,), 300.0), torch.tensor([0, 1, 2, 3, 0, 1])
    out = wrapped(x, t, y)
    assert out.shape == (6, 1, 8, 8)
    assert torch.allclose(out, denoiser(x, t, y), atol=1e-5)  # same function, only the call shapes differ
    with pytest.raises(ConfigError, match="sampling.microbatch"):
        FixedShapeDenoiser(denoiser, 0)


def test_an_image_ignores_the_guidance_of_its_batch_mates(model):
    denoiser, process = model
    mixed = build_items([3, 3, 3], base_seed=4, guidance=[1.0, 3.0, 1.0])
    together = generate_images(
        denoiser,
        process,
        mixed,
        image_shape=(1, 8, 8),
        sampler="ddim",
        steps=5,
        device=torch.device("cpu"),
        microbatch=4,
    )
    apart = torch.cat(
        [
            generate_images(
                denoiser,
                process,
                [it],
                image_shape=(1, 8, 8),
                sampler="ddim",
                steps=5,
                device=torch.device("cpu"),
                microbatch=4,
            )
            for it in mixed
        ]
    )
    assert together.dtype == torch.uint8 and torch.equal(together, apart)
    guided_b = [n for n, it in enumerate(mixed) if it.class_index == 1]
    plain = generate_images(
        denoiser,
        process,
        [mixed[n] for n in guided_b],
        image_shape=(1, 8, 8),
        sampler="ddim",
        steps=5,
        device=torch.device("cpu"),
        microbatch=4,
    )
    unguided = build_items([3, 3, 3], base_seed=4, guidance=[1.0, 1.0, 1.0])
    plain_unguided = generate_images(
        denoiser,
        process,
        [unguided[n] for n in guided_b],
        image_shape=(1, 8, 8),
        sampler="ddim",
        steps=5,
        device=torch.device("cpu"),
        microbatch=4,
    )
    assert torch.equal(plain, together[guided_b]) and not torch.equal(plain, plain_unguided)  # guidance acts


def test_device_and_precision_choices(caplog):
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="sampling.device"):
        resolve_device("tpu:x")
    with pytest.raises(ConfigError, match="choose one of 32, bf16, 16"):
        autocast_for(torch.device("cpu"), "fp8")
    with caplog.at_level(logging.WARNING):
        context = autocast_for(torch.device("cpu"), "bf16")
    with context:
        assert torch.get_autocast_dtype("cpu") is not None and not torch.is_autocast_enabled("cpu")
    assert "CUDA only" in caplog.text
