"""The export's identity names the device type and the precision sampling ran in: parts made on different
device types are refused, and on --device an export is byte-identical at any batch size."""

from __future__ import annotations

import json

import pytest

from diffaug.augset.plan import ExportPlan
from diffaug.config import ConfigError
from diffaug.sampling import export_augmentation_set
from tests.export_helpers import make_checkpoint, one_cpu_thread, tree_digest  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

NAMES = ("cat", "dog", "bird")
BASE = ["export.per_class=4", "export.formats=[folder,shards]", "export.shard_size=5"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"), class_names=NAMES)


def export(checkpoint, out, *overrides, **kwargs):
    return export_augmentation_set(checkpoint, [*BASE, f"export.out_dir={out}", *overrides], **kwargs)


def plan_of(out) -> dict:
    return json.loads((out / ".export" / "plan.json").read_text())["plan"]


def test_a_part_from_another_device_type_is_refused(checkpoint, tmp_path):
    out = tmp_path / "set"
    export(checkpoint, out, rank=0, world_size=2)
    plan = plan_of(out)
    assert (plan["device_type"], plan["precision"]) == ("cpu", "32")
    # As if part 0 had been sampled on a GPU: part 1 on the CPU must not join it.
    saved = json.loads((out / ".export" / "plan.json").read_text())
    saved["plan"]["device_type"] = "cuda"
    (out / ".export" / "plan.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="sampled on cuda; this process samples on cpu.*every part on cuda"):
        export(checkpoint, out, rank=1, world_size=2)
    on_gpu = ExportPlan.from_dict({**plan, "device_type": "cuda"})
    assert on_gpu.config_hash != ExportPlan.from_dict(plan).config_hash


def test_the_card_records_where_and_in_what_precision_the_set_was_sampled(checkpoint, tmp_path):
    # On a CPU, sampling.precision=bf16 samples in float32 (it applies on CUDA only): the same set, the same
    # identity, so such parts may be combined with float32 ones.
    export(checkpoint, tmp_path / "fp32")
    export(checkpoint, tmp_path / "bf16", "sampling.precision=bf16")
    cards = [json.loads((tmp_path / name / "dataset_card.json").read_text()) for name in ("fp32", "bf16")]
    assert (cards[1]["sampling"]["device_type"], cards[1]["sampling"]["precision"]) == ("cpu", "32")
    assert cards[0]["config_hash"] == cards[1]["config_hash"]
    images = [{p: h for p, h in tree_digest(tmp_path / name).items() if not p.startswith("dataset_card")}
              for name in ("fp32", "bf16")]  # the cards quote the config as given
    assert images[0] == images[1]


@pytest.mark.device
def test_export_on_the_device_is_byte_identical_at_two_batch_sizes(checkpoint, tmp_path, device):
    precision = "bf16" if device.type == "cuda" else "32"
    settings = [f"sampling.device={device.type}", f"sampling.precision='{precision}'", "sampling.steps=10"]
    export(checkpoint, tmp_path / "b12", *settings, "sampling.batch_size=12")
    export(checkpoint, tmp_path / "b5", *settings, "sampling.batch_size=5")
    card = json.loads((tmp_path / "b5" / "dataset_card.json").read_text())
    assert (card["sampling"]["device_type"], card["sampling"]["precision"]) == (device.type, precision)
    digest = tree_digest(tmp_path / "b12")
    assert digest == tree_digest(tmp_path / "b5")
    assert len({h for p, h in digest.items() if p.startswith("images/")}) == 12  # 12 different images
