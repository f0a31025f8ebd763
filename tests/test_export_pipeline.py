"""End-to-end exports from a real (tiny) checkpoint: byte-identical sets, resume, parts, shards, quotas,
image-conditioned variations, curation and hostile class names."""

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffaug.config import ConfigError
from diffaug.data import DiffusionDataModule, ImageTransform, to_model_range, to_uint8
from diffaug.diffusion import sample
from diffaug.augset import derive_seed, file_sha256, finalize_export, sanitize_class_names
from diffaug.sampling import export_augmentation_set, load_model
from diffaug.sampling.fixed_shape import FixedShapeDenoiser
from tests.export_helpers import make_checkpoint, one_cpu_thread, tree_digest  # noqa: F401 (fixture)

NAMES = ("cat", "dog", "bird")
BASE = ["export.per_class=6", "export.formats=[folder,shards]", "export.shard_size=5"]


def export(checkpoint, out, *overrides, **kwargs):
    return export_augmentation_set(checkpoint, [*BASE, f"export.out_dir={out}", *overrides], **kwargs)


def png_tensor(path: Path) -> torch.Tensor:
    array = torch.from_numpy(__import__("numpy").asarray(Image.open(path)).copy())
    return array.unsqueeze(0)  # (1, H, W) uint8


def manifest(out: Path) -> list[dict]:
    with open(out / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"), class_names=NAMES)


@pytest.fixture(scope="module")
def reference(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "set"
    summary = export(checkpoint, out, "sampling.batch_size=16")
    assert summary.finalized and summary.generated == 18
    return out


def test_reference_set_layout_and_manifest(checkpoint, reference):
    files = tree_digest(reference)
    images = sorted(p for p in files if p.startswith("images/"))
    assert images == [f"images/{name}/{i:06d}.png" for name in sorted(NAMES) for i in range(6)]
    assert not [p for p in files if Path(p).name.startswith(".")]  # no work folder, no temp file
    assert sorted(p for p in files if not p.startswith("images/")) == [
        "classes.json",
        "dataset_card.json",
        "dataset_card.md",
        "manifest.csv",
        "manifest.jsonl",
        "shards/classes.json",
        "shards/shard-000000.tar",
        "shards/shard-000001.tar",
        "shards/shard-000002.tar",
        "shards/shard-000003.tar",
        "shards/shards.json",
    ]
    rows = manifest(reference)
    assert [(int(r["class_index"]), int(r["index"])) for r in rows] == [
        (c, i) for c in range(3) for i in range(6)
    ]
    sha = file_sha256(checkpoint)
    for row in rows:
        c, i = int(row["class_index"]), int(row["index"])
        assert row["class_name"] == NAMES[c] and int(row["seed"]) == derive_seed(0, c, i)
        assert (row["sampler"], row["steps"], row["checkpoint_sha256"]) == ("ddim", "3", sha)
        assert hashlib.sha256((reference / row["path"]).read_bytes()).hexdigest() == row["png_sha256"]
    jsonl = [json.loads(line) for line in (reference / "manifest.jsonl").read_text().splitlines()]
    assert [r["path"] for r in jsonl] == [r["path"] for r in rows]
    card = json.loads((reference / "dataset_card.json").read_text())
    assert [(c["name"], c["planned"], c["kept"]) for c in card["classes"]] == [(n, 6, 6) for n in NAMES]
    assert card["config"]["model"]["net"] == "unet-tiny" and "batch_size" not in card["config"]["sampling"]
    assert json.loads((reference / "shards/shards.json").read_text()) == {
        "shard-000000.tar": 5,
        "shard-000001.tar": 5,
        "shard-000002.tar": 5,
        "shard-000003.tar": 3,
    }
    # Images differ between classes and seeds: byte equality elsewhere is not trivially true.
    assert len({r["png_sha256"] for r in rows}) == 18


def test_batch_size_one_gives_the_same_bytes(checkpoint, reference, tmp_path):
    export(checkpoint, tmp_path / "set", "sampling.batch_size=1")
    assert tree_digest(tmp_path / "set") == tree_digest(reference)
    # Over 20 steps the last-bit differences between batch shapes used to flip pixels; not any more.
    export(
        checkpoint,
        tmp_path / "long1",
        "sampling.batch_size=1",
        "sampling.steps=20",
        "sampling.guidance_scale=2",
    )
    export(
        checkpoint,
        tmp_path / "long16",
        "sampling.batch_size=16",
        "sampling.steps=20",
        "sampling.guidance_scale=2",
    )
    assert tree_digest(tmp_path / "long1") == tree_digest(tmp_path / "long16")


def test_parts_made_separately_give_the_same_bytes(checkpoint, reference, tmp_path, monkeypatch):
    out = tmp_path / "set"
    first = export(checkpoint, out, "sampling.batch_size=4", rank=1, world_size=3)
    assert (first.generated, first.finalized, first.pending) == (6, False, 12)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")  # a SLURM array task makes part 0 of 3
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    second = export(checkpoint, out, "sampling.batch_size=5")
    assert (second.rank, second.world_size, second.finalized, second.pending) == (0, 3, False, 6)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    last = export(checkpoint, out, rank=2, world_size=3)  # the last part to finish finalises
    assert last.finalized and last.generated == 6
    assert tree_digest(out) == tree_digest(reference)


def test_rerun_is_a_no_op_and_other_settings_are_refused(checkpoint, reference, tmp_path):
    out = tmp_path / "set"
    shutil.copytree(reference, out)
    again = export(checkpoint, out)
    assert again.finalized and again.generated == 0 and sum(again.kept.values()) == 18
    assert tree_digest(out) == tree_digest(reference)
    with pytest.raises(ConfigError, match="finished export made with other settings"):
        export(checkpoint, out, "sampling.steps=2")
    with pytest.raises(ConfigError, match="is not empty and holds no export"):
        export(checkpoint, reference / "images")  # never mixes into a folder of other files
    partial = tmp_path / "partial"
    export(checkpoint, partial, rank=0, world_size=2)
    with pytest.raises(
        ConfigError, match=r"unfinished export made with other settings \(differences in: steps\)"
    ):
        export(checkpoint, partial, "sampling.steps=2", rank=1, world_size=2)
    with pytest.raises(RuntimeError, match="9 images are still missing"):
        finalize_export(partial)
    rest = export(checkpoint, partial, rank=1, world_size=2, finalize=False)
    assert not rest.finalized and not (partial / "dataset_card.json").exists()
    assert finalize_export(partial).finalized  # the separate finalisation step, e.g. after a SLURM array
    assert tree_digest(partial) == tree_digest(reference)


def test_shards_load_back_through_the_data_module(reference):
    dm = DiffusionDataModule(
        source="shards",
        path=reference / "shards",
        resolution=8,
        channels=1,
        batch_size=4,
        shuffle_buffer=0,
        val_fraction=0.0,
    )
    assert dm.class_map.names == NAMES
    dm.setup("fit")
    loaded = [(to_uint8(image), label) for image, label in dm.train_set]
    assert dm.corrupt_count == 0
    expected = {
        png_tensor(reference / r["path"]).numpy().tobytes(): int(r["class_index"])
        for r in manifest(reference)
    }
    assert len(loaded) == len(expected) == 18
    assert {image.numpy().tobytes(): label for image, label in loaded} == expected


def test_shards_only_leaves_no_image_folder(checkpoint, tmp_path):
    out = tmp_path / "set"
    export_augmentation_set(
        checkpoint, ["export.per_class=2", "export.formats=[shards]", f"export.out_dir={out}"]
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "classes.json",
        "dataset_card.json",
        "dataset_card.md",
        "manifest.csv",
        "manifest.jsonl",
        "shards",
    ]
    rows = manifest(out)
    assert all(r["path"] == "" and r["shard"] == "shards/shard-000000.tar" for r in rows) and len(rows) == 6
    dm = DiffusionDataModule(
        source="shards",
        path=out / "shards",
        resolution=8,
        channels=1,
        batch_size=2,
        shuffle_buffer=0,
        val_fraction=0.0,
    )
    dm.setup("fit")
    assert sorted(label for _, label in dm.train_set) == [0, 0, 1, 1, 2, 2]


def test_hostile_class_names_cannot_write_outside(tmp_path):
    names = ("../../etc", "/abs/path", "a/b", "a_b", "CON", "..")
    checkpoint = make_checkpoint(tmp_path / "ckpt", class_names=names)
    out = tmp_path / "deep" / "er" / "out"
    export_augmentation_set(
        checkpoint, ["export.per_class=1", "export.formats=[folder,shards]", f"export.out_dir={out}"]
    )
    outside = [
        p
        for p in tmp_path.rglob("*")
        if out not in p.parents
        and p != out
        and p not in (tmp_path / "ckpt", checkpoint, tmp_path / "deep", tmp_path / "deep" / "er")
    ]
    assert outside == []
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(sanitize_class_names(names))
    assert [r["class_name"] for r in manifest(out)] == list(names)  # labels keep the real names
    assert json.loads((out / "classes.json").read_text())["names"] == list(names)


def test_quotas_follow_the_real_class_counts(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt")  # sklearn digits, 10 classes
    dm = DiffusionDataModule(
        source="sklearn_digits", resolution=8, channels=1, batch_size=1, val_fraction=0.05
    )
    dm.setup("fit")
    counts = torch.bincount(torch.as_tensor(dm.train_set.targets), minlength=10).tolist()
    summary = export_augmentation_set(
        checkpoint, ["export.multiple=0.02", "export.dedup_threshold=0.0", f"export.out_dir={tmp_path / 'm'}"]
    )
    card = json.loads((tmp_path / "m" / "dataset_card.json").read_text())
    assert card["curation"]["dedup_reference_images"] == sum(counts)  # compared with the whole training split
    assert [summary.planned[str(d)] for d in range(10)] == [int(0.02 * n + 0.5) for n in counts]
    assert [summary.kept[str(d)] for d in range(10)] == [int(0.02 * n + 0.5) for n in counts]
    given = {str(d): 10 + d % 3 for d in range(10)}
    balanced = export_augmentation_set(
        checkpoint,
        ["export.balance=true", "export.formats=[shards]", f"export.out_dir={tmp_path / 'b'}"],
        real_counts=given,
    )
    assert balanced.planned == {str(d): 2 - d % 3 for d in range(10)}
    card = json.loads((tmp_path / "b" / "dataset_card.json").read_text())
    assert (
        "| 1 | 1 | 1 | 1 | 1 |" in (tmp_path / "b" / "dataset_card.md").read_text()
    )  # index, name, folder, counts
    assert card["num_images"] == sum(2 - d % 3 for d in range(10)) and "balanced" in card["quota_mode"]


def test_class_guidance_changes_only_its_class(checkpoint, reference, tmp_path):
    out = tmp_path / "set"
    export(checkpoint, out, "sampling.class_guidance={dog: 3.0}", "sampling.batch_size=16")
    rows, ref_rows = manifest(out), manifest(reference)
    for row, ref in zip(rows, ref_rows, strict=True):
        assert float(row["guidance"]) == (3.0 if row["class_name"] == "dog" else 1.0)
        same = row["png_sha256"] == ref["png_sha256"]
        assert same == (row["class_name"] != "dog"), row["path"]


def test_random_guidance_gives_each_image_its_own_scale_at_any_batch_size(checkpoint, reference, tmp_path):
    sets = [export(checkpoint, tmp_path / f"b{b}", "sampling.random_guidance=[1.0,3.0]", f"sampling.batch_size={b}")
            for b in (16, 5)]
    assert tree_digest(tmp_path / "b16") == tree_digest(tmp_path / "b5")
    rows, ref_rows = manifest(tmp_path / "b16"), manifest(reference)
    scales = [float(r["guidance"]) for r in rows]
    assert all(1.0 <= g <= 3.0 for g in scales) and len(set(scales)) == len(scales) == sets[0].generated
    assert [r["seed"] for r in rows] == [r["seed"] for r in ref_rows]  # the same noise, other scales
    model = load_model(checkpoint, ["sampling.device=cpu"])
    row = rows[4]
    c, i = int(row["class_index"]), int(row["index"])
    x0 = sample("ddim", FixedShapeDenoiser(model.denoiser, 4), model.process, shape=(1, 1, 8, 8),
                seeds=[derive_seed(0, c, i)], class_labels=torch.tensor([c]), steps=3,
                guidance_scale=float(row["guidance"]), clip_x0=True)
    assert torch.equal(to_uint8(x0)[0], png_tensor(tmp_path / "b16" / row["path"]))
    card = json.loads((tmp_path / "b16" / "dataset_card.json").read_text())
    assert card["sampling"]["random_guidance"] == [1.0, 3.0]
    assert "guidance uniform in [1.0, 3.0], per image" in (tmp_path / "b16" / "dataset_card.md").read_text()
    # an unset range leaves earlier sets' identity alone
    assert "random_guidance" not in json.loads((reference / "dataset_card.json").read_text())["sampling"]


def test_image_conditioned_variations(checkpoint, tmp_path):
    source = tmp_path / "real"
    gen = torch.Generator().manual_seed(3)
    for name, count in (("cat", 2), ("bird", 1)):
        (source / name).mkdir(parents=True)
        for k in range(count):
            pixels = torch.randint(0, 256, (12, 12), generator=gen, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(source / name / f"img{k}.png")
    out = tmp_path / "set"
    summary = export_augmentation_set(
        checkpoint,
        [
            f"export.source_images={source}",
            "export.multiple=2",
            "export.strength=0.5",
            f"export.out_dir={out}",
        ],
    )
    assert summary.kept == {"cat": 4, "dog": 0, "bird": 2}  # 2 x the source images per class
    rows = manifest(out)
    assert [(r["class_name"], Path(r["source_image"]).name) for r in rows] == [
        ("cat", "img0.png"),
        ("cat", "img1.png"),
        ("cat", "img0.png"),
        ("cat", "img1.png"),
        ("bird", "img0.png"),
        ("bird", "img0.png"),
    ]
    model = load_model(checkpoint, ["sampling.device=cpu"])
    transform = ImageTransform(resolution=8, channels=1)
    for row in rows:  # each image is SDEdit of its source with its own seed
        c, i = int(row["class_index"]), int(row["index"])
        x_start = transform(Image.open(row["source_image"])).unsqueeze(0)  # (1, 1, 8, 8)
        x0 = sample(
            "ddim",
            FixedShapeDenoiser(model.denoiser, 4),
            model.process,
            shape=(1, 1, 8, 8),
            seeds=[derive_seed(0, c, i)],
            class_labels=torch.tensor([c]),
            steps=3,
            x_start=x_start,
            strength=0.5,
            clip_x0=True,  # sampling.clip_x0's default
        )
        assert torch.equal(to_uint8(x0)[0], png_tensor(out / row["path"]))
        assert float(row["strength"]) == 0.5


def test_variations_of_the_models_own_k_shot_training_images(tmp_path, monkeypatch):
    # A k-shot run (2 digits per class): source_images=train varies exactly those images, read through the
    # checkpoint's data config, with no folder of files to point at.
    checkpoint = make_checkpoint(tmp_path / "ckpt", overrides=("data.per_class_limit=2", "data.seed=5"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "set"
    summary = export_augmentation_set(
        checkpoint, ["export.source_images=train", "export.multiple=1.5", f"export.out_dir={out}"]
    )
    assert summary.kept == {str(d): 3 for d in range(10)}  # 1.5 x the 2 training images of each class
    dm = DiffusionDataModule(source="sklearn_digits", resolution=8, channels=1, batch_size=1,
                             per_class_limit=2, seed=5)
    dm.setup("fit")
    real = {c: [image for image, label in dm.train_set if label == c] for c in range(10)}
    model = load_model(checkpoint, ["sampling.device=cpu"])
    rows = manifest(out)
    assert [r["source_image"] for r in rows[:3]] == ["train:0/000000", "train:0/000001", "train:0/000000"]
    for row in rows:
        c, i = int(row["class_index"]), int(row["index"])
        x0 = sample("ddim", FixedShapeDenoiser(model.denoiser, 4), model.process, shape=(1, 1, 8, 8),
                    seeds=[derive_seed(0, c, i)], class_labels=torch.tensor([c]), steps=3,
                    x_start=real[c][i % 2].unsqueeze(0), strength=0.5, clip_x0=True)
        assert torch.equal(to_uint8(x0)[0], png_tensor(out / row["path"])), row["path"]
    assert "from the model's training images" in (out / "dataset_card.md").read_text()
    (tmp_path / "train").mkdir()  # a folder of that name here: ambiguous, so refused
    with pytest.raises(ConfigError, match=r"write \./train"):
        export_augmentation_set(checkpoint, ["export.source_images=train", "export.multiple=1",
                                             f"export.out_dir={tmp_path / 'b'}"])


class RandomLinear(torch.nn.Module):
    """A fixed random linear classifier on pixels: real logits whose verdicts vary from image to image."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(64, 3)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(3, 64, generator=torch.Generator().manual_seed(0)) * 3)
            self.linear.bias.zero_()

    def forward(self, x):
        return self.linear(x.flatten(1))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_curation_drops_what_the_classifier_rejects_and_flags_training_copies(
    checkpoint, reference, tmp_path
):
    classifier = torch.jit.script(RandomLinear().eval())
    classifier_path = tmp_path / "classifier.pt"
    classifier.save(str(classifier_path))
    copies = tmp_path / "training"  # two generated images planted in the reference data: memorised copies
    copies.mkdir()
    for rel in ("images/cat/000001.png", "images/bird/000004.png"):
        shutil.copy(reference / rel, copies / rel.replace("/", "_"))
    out = tmp_path / "set"
    summary = export(
        checkpoint,
        out,
        f"export.classifier={classifier_path}",
        "export.min_confidence=0.4",
        "export.dedup_threshold=0.001",
        f"export.dedup_reference={copies}",
        "sampling.batch_size=16",
    )
    expected_kept = []
    for ref in manifest(reference):
        with torch.no_grad():
            logits = classifier(to_model_range(png_tensor(reference / ref["path"])).unsqueeze(0))
        probs = logits.softmax(1)[0]
        c = int(ref["class_index"])
        if int(probs.argmax()) == c and float(probs[c]) >= 0.4:
            expected_kept.append(ref)
    assert 0 < len(expected_kept) < 18  # the classifier really drops some and keeps some
    rows = manifest(out)
    assert [(r["path"], r["png_sha256"]) for r in rows] == [
        (r["path"], r["png_sha256"]) for r in expected_kept
    ]
    assert sorted(p.relative_to(out).as_posix() for p in (out / "images").rglob("*.png")) == sorted(
        r["path"] for r in expected_kept
    )
    dropped = {
        n: sum(1 for r in manifest(reference) if r["class_name"] == n)
        - sum(1 for r in expected_kept if r["class_name"] == n)
        for n in NAMES
    }
    assert summary.dropped_classifier == dropped
    flagged = {r["path"] for r in rows if r["near_duplicate"] == "true"}
    assert flagged == {"images/cat/000001.png", "images/bird/000004.png"} & {r["path"] for r in rows}
    assert all(float(r["nn_distance"]) > 0.001 for r in rows if r["path"] not in flagged)
    card = json.loads((out / "dataset_card.json").read_text())
    assert sum(c["dropped_classifier"] for c in card["classes"]) == 18 - len(expected_kept)

    dropping = tmp_path / "drop"
    summary = export(
        checkpoint,
        dropping,
        "export.dedup_threshold=0.001",
        f"export.dedup_reference={copies}",
        "export.dedup_action=drop",
    )
    assert summary.dropped_near_duplicate == {"cat": 1, "dog": 0, "bird": 1}
    assert {r["path"] for r in manifest(dropping)} == {r["path"] for r in manifest(reference)} - {
        "images/cat/000001.png",
        "images/bird/000004.png",
    }


def test_dataset_card_front_matter_loads_with_hugging_face_datasets(reference, tmp_path):
    import yaml

    text = (reference / "dataset_card.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["license"] == "unknown" and meta["task_categories"] == ["image-classification"]
    assert meta["size_categories"] == ["n<1K"]
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "images/**"}]}]
    names = meta["dataset_info"]["features"][1]["dtype"]["class_label"]["names"]
    assert names == {"0": "bird", "1": "cat", "2": "dog"}  # imagefolder's numbering: sorted folder names
    card = json.loads((reference / "dataset_card.json").read_text())
    assert meta["diffaug"]["class_names"] == list(NAMES)
    assert meta["diffaug"]["checkpoint_sha256"] == card["checkpoint_sha256"]
    assert meta["diffaug"]["config_hash"] == card["config_hash"]
    import datasets  # the test extra installs it: a missing one fails here rather than skipping
    loaded = datasets.load_dataset("imagefolder", data_dir=str(reference), cache_dir=str(tmp_path), split="train")
    assert loaded.num_rows == 18  # the PNGs only: shards and manifests are not images
    assert loaded.features["label"].names == [names[str(i)] for i in range(3)]
    paths = loaded.cast_column("image", datasets.Image(decode=False))["image"]
    for row, image in zip(loaded, paths):
        assert Path(image["path"]).parent.name == loaded.features["label"].int2str(row["label"])
