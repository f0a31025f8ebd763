"""Pixel range mapping, image conversion and the class map."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffaug.data import ClassMap, ImageTransform, to_model_range, to_uint8


def test_model_range_endpoints_and_midpoint():
    x = torch.tensor([0, 255, 128, 127], dtype=torch.uint8)
    y = to_model_range(x)
    assert y.dtype == torch.float32
    assert y[0].item() == -1.0
    assert y[1].item() == 1.0
    assert y[2].item() == pytest.approx(128 / 127.5 - 1, abs=1e-6)
    assert y[3].item() == pytest.approx(127 / 127.5 - 1, abs=1e-6)


def test_uint8_round_trip_is_exact_for_every_value():
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(to_uint8(to_model_range(x)), x)


def test_to_uint8_clamps_and_rounds():
    y = torch.tensor([-3.0, -1.0, 1.0, 7.0, 0.0])
    assert to_uint8(y).tolist() == [0, 0, 255, 255, 128]  # 0 -> 127.5 -> rounds to even 128


def test_range_functions_reject_wrong_dtypes():
    with pytest.raises(TypeError, match="uint8"):
        to_model_range(torch.zeros(3))
    with pytest.raises(TypeError, match="floating"):
        to_uint8(torch.zeros(3, dtype=torch.uint8))


def test_rgb_to_one_channel_resize_and_center_crop():
    # 40 wide x 30 high: shorter side 30 -> 16, width -> 21, centre crop 16x16.
    array = np.zeros((30, 40, 3), dtype=np.uint8)
    array[:, :20] = (255, 0, 0)  # left half red
    array[:, 20:] = (0, 0, 255)  # right half blue
    out = ImageTransform(resolution=16, channels=1)(Image.fromarray(array))
    assert out.shape == (1, 16, 16)
    assert out.dtype == torch.float32
    grey = to_uint8(out)[0]
    # ITU-R 601 luma: red -> 76, blue -> 29; the crop keeps both halves, red on the left.
    assert grey[8, 0].item() == 76
    assert grey[8, 15].item() == 29
    assert out.min() >= -1 and out.max() <= 1


def test_grey_to_rgb_and_rgba_channels():
    image = Image.fromarray(np.full((10, 10), 200, dtype=np.uint8))
    rgb = to_uint8(ImageTransform(resolution=10, channels=3)(image))
    assert rgb.shape == (3, 10, 10) and (rgb == 200).all()
    rgba = to_uint8(ImageTransform(resolution=10, channels=4)(image))
    assert rgba.shape == (4, 10, 10)
    assert (rgba[:3] == 200).all() and (rgba[3] == 255).all()


def test_same_size_image_is_not_resampled():
    array = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    out = ImageTransform(resolution=28, channels=1)(Image.fromarray(array))
    assert torch.equal(to_uint8(out)[0], torch.from_numpy(array))


def test_sixteen_bit_grey_is_rescaled_not_clipped():
    array = np.array([[0, 65535], [32768, 65535]], dtype=np.uint16)
    out = to_uint8(ImageTransform(resolution=2, channels=1)(Image.fromarray(array)))
    assert out[0].tolist() == [[0, 255], [128, 255]]


def test_hflip_flips_some_samples_and_is_off_by_default():
    array = np.zeros((4, 4), dtype=np.uint8)
    array[:, 0] = 255
    image = Image.fromarray(array)
    plain = ImageTransform(resolution=4, channels=1)
    assert all(to_uint8(plain(image))[0, 0, 0] == 255 for _ in range(20))
    torch.manual_seed(0)
    flipping = ImageTransform(resolution=4, channels=1, hflip=True)
    left = [to_uint8(flipping(image))[0, 0, 0].item() == 255 for _ in range(40)]
    assert 0 < sum(left) < 40


def test_unsupported_channels_error_lists_choices():
    with pytest.raises(ValueError, match=r"1 \(grey.*3 \(RGB\) or 4"):
        ImageTransform(resolution=8, channels=2)


def test_classmap_lookup_and_json_round_trip(tmp_path):
    cmap = ClassMap(["cat", "dog", "T-shirt/top"])
    assert cmap.names == ("cat", "dog", "T-shirt/top")  # lists are stored as tuples
    assert len(cmap) == 3 and cmap.index("dog") == 1 and cmap.name(2) == "T-shirt/top"
    path = tmp_path / "classes.json"
    cmap.to_json(path)
    assert json.loads(path.read_text()) == {"names": ["cat", "dog", "T-shirt/top"]}
    assert ClassMap.from_json(path) == cmap
    assert ClassMap.from_dict(cmap.to_dict()) == cmap
    with pytest.raises(KeyError, match="Did you mean 'dog'"):
        cmap.index("dgo")
    with pytest.raises(IndexError):
        cmap.name(3)


@pytest.mark.parametrize(
    "names, message",
    [((), "at least one"), (("a", "a"), "unique"), (("a", ""), "non-empty"), (("a", 3), "non-empty")],
)
def test_classmap_rejects_bad_names(names, message):
    with pytest.raises(ValueError, match=message):
        ClassMap(names)


def test_classmap_json_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        ClassMap.from_json(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"classes": ["a"]}')
    with pytest.raises(ValueError, match="wrong.json"):
        ClassMap.from_json(wrong)
