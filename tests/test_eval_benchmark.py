"""The downstream benchmark's protocol: validation-only choices, equal real exposure, k-shot subsets that
match training's, the teacher filter, memorisation, the report, and its errors (8x8 digits, tiny CNNs)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from diffaug.build import build_datamodule
from diffaug.config import load_config
from diffaug.data import ClassMap
from diffaug.evaluation import downstream as ds
from diffaug.evaluation.augment import Augmenter, one_hot, parse_recipe
from diffaug.evaluation.classifiers import build_classifier
from diffaug.evaluation.cli import eval_main
from diffaug.evaluation.data import LabelledImages, load_real
from diffaug.evaluation.memorisation import memorisation_report, nearest_ratio
from diffaug.evaluation.recipe import Recipe, SyntheticMix, fit_classifier
from diffaug.sampling import export_augmentation_set
from tests.export_helpers import make_checkpoint

HOLDOUT = 20
TINY = {"width": 8}


@pytest.fixture(scope="module")
def digits() -> LabelledImages:
    return load_real(source="sklearn_digits", path=None, split="train", resolution=8, channels=1)


@pytest.fixture(scope="module")
def pool(digits) -> ds.Pool:
    return ds.Pool(digits, HOLDOUT, 0)


def _spec(**changes) -> ds.BenchmarkSpec:
    base = dict(arms=["real", "real+aug"], ks=[5], seeds=[0], recipe=Recipe(steps=40, batch_size=16, eval_every=10),
                augment=["crop", "trivial+crop"], classifier_args=TINY)
    return ds.BenchmarkSpec(**{**base, **changes})


# ---------------------------------------------------------------- splits


@pytest.mark.parametrize("seed", [0, 3])
def test_kshot_subset_is_what_training_saw_and_validation_is_disjoint(pool, digits, seed):
    cfg = load_config([], ["data.source=sklearn_digits", "data.resolution=8", "data.per_class_limit=7",
                           f"data.seed={seed}", f"data.holdout_per_class={HOLDOUT}", "data.val_fraction=0.1",
                           "data.batch_size=8"])
    module = build_datamodule(cfg)
    module.setup("fit")
    trained = torch.stack([module.train_set[i][0] for i in range(len(module.train_set))])  # (N, 1, 8, 8) in [-1, 1]
    kshot = pool.kshot(7, seed)
    assert kshot.class_counts().tolist() == [7] * 10
    assert torch.equal(((trained + 1) * 127.5).round().to(torch.uint8).sort(0).values, kshot.images.sort(0).values)

    def rows(images: torch.Tensor) -> set[bytes]:
        return {bytes(x.numpy().tobytes()) for x in images}

    val = pool.validation()
    assert val.class_counts().tolist() == [HOLDOUT] * 10
    # Not in the k-shot set, its 2k superset, nor the diffusion run's own validation split, for any seed.
    seen = torch.cat([pool.kshot(14, seed).images, torch.stack([module.val_set[i][0] for i in range(len(module.val_set))])
                      .add(1).mul(127.5).round().to(torch.uint8)])
    assert not rows(val.images) & rows(seen)
    assert rows(kshot.images) <= rows(pool.kshot(14, seed).images)  # real2x holds the k-shot images


def test_k_larger_than_a_class_is_refused_with_the_limit(pool):
    most = int(pool.train.class_counts().min()) - HOLDOUT
    with pytest.raises(ValueError, match=rf"at most {most}"):
        pool.kshot(most + 1, 0)


# ---------------------------------------------------------------- augmentation


def test_recipes_parse_and_unknown_operations_list_the_valid_ones():
    assert parse_recipe("trivial+crop+cutmix") == ("trivial", "crop", "cutmix")
    assert parse_recipe("none") == ()
    with pytest.raises(ValueError, match="cutmix"):
        parse_recipe("crop+cutmixx")
    with pytest.raises(ValueError, match="at most one"):
        parse_recipe("mixup+cutmix")


def test_augmenter_is_reproducible_per_generator_and_changes_pixels(digits):
    images, targets = digits.images[:16], one_hot(digits.labels[:16], 10)
    for recipe in ("crop", "trivial+crop", "crop+erase", "randaug", "affine", "flip"):
        aug = Augmenter(recipe, size=8, hflip=True)
        a = aug(images, targets, torch.Generator().manual_seed(1))
        b = aug(images, targets, torch.Generator().manual_seed(1))
        c = aug(images, targets, torch.Generator().manual_seed(2))
        assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x), recipe
        assert a.x.shape == (16, 1, 8, 8) and a.x.min() >= -1 and a.x.max() <= 1
        assert torch.equal(a.y, targets)  # image operations keep the labels
    plain = Augmenter("none", size=8)(images, targets, torch.Generator())
    assert torch.equal(plain.x, images.float() / 127.5 - 1)


def test_batched_crop_flip_erase_are_per_image_and_what_they_say():
    x = torch.arange(20 * 64, dtype=torch.float32).reshape(20, 1, 8, 8) / 1280 * 2 - 1  # every pixel distinct
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        from diffaug.evaluation.augment import _erase, _flip, _pad_crop

        crop, flip, erase = _pad_crop(x), _flip(x), _erase(x)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")  # a pad of 8 / 8 = 1 px
    offsets = set()
    for i in range(20):  # each crop is one window of its own padded image
        found = [(dy, dx) for dy in range(3) for dx in range(3) if torch.equal(crop[i], padded[i, :, dy:dy + 8, dx:dx + 8])]
        assert len(found) == 1
        offsets.add(found[0])
        assert torch.equal(flip[i], x[i]) or torch.equal(flip[i], x[i].flip(-1))
        changed = erase[i] != x[i]
        if changed.any():  # one axis-aligned rectangle, set to 0
            ys, xs = torch.nonzero(changed[0], as_tuple=True)
            box = changed[0, ys.min():ys.max() + 1, xs.min():xs.max() + 1]
            assert box.all() and (erase[i][changed] == 0).all()
    assert len(offsets) >= 5  # drawn per image, not once per batch
    assert 3 <= sum(not torch.equal(flip[i], x[i]) for i in range(20)) <= 17


@pytest.mark.parametrize("mixer", ["mixup", "cutmix"])
def test_mixing_targets_match_the_mixed_pixels(mixer):
    # Class c images are constant c / 10 everywhere, so each pixel says which image it came from.
    labels = torch.arange(10)
    images = (labels.float() * 25).to(torch.uint8).reshape(10, 1, 1, 1).expand(10, 1, 8, 8).contiguous()
    batch = Augmenter(mixer, size=8)(images, one_hot(labels, 10), torch.Generator().manual_seed(0))
    assert torch.allclose(batch.y.sum(1), torch.ones(10))
    value = (batch.x + 1) * 127.5 / 25  # the class each pixel came from, mixed
    # The target's expected class equals the mean class of the pixels, image by image.
    assert torch.allclose((batch.y * labels).sum(1), value.mean(dim=(1, 2, 3)), atol=1e-3)


# ---------------------------------------------------------------- the recipe


def test_equal_real_exposure_holds_exactly_whatever_is_added(digits):
    real, synthetic = digits.subset(torch.arange(50)), digits.subset(torch.arange(50, 200))
    recipe = Recipe(steps=12, batch_size=10, eval_every=5)
    seen = {}
    for name, syn, mix in (("real", None, SyntheticMix()), ("1:1", synthetic, SyntheticMix(1.0)),
                           ("1:3", synthetic, SyntheticMix(3.0, 0.5))):
        model = build_classifier("small-cnn", num_classes=10, in_channels=1, **TINY)
        fit = fit_classifier(model, real=real, synthetic=syn, augment=None, recipe=recipe, seed=0,
                             device=torch.device("cpu"), mix=mix, val=digits.subset(torch.arange(300, 400)))
        seen[name] = (fit.real_seen, fit.synthetic_seen)
        assert [s for s, _ in fit.history] == [5, 10, 12]
        assert fit.best_val == max(v for _, v in fit.history)
    assert seen == {"real": (120, 0), "1:1": (120, 120), "1:3": (120, 360)}


def test_best_validation_checkpoint_is_the_one_returned(digits):
    val = digits.subset(torch.arange(300, 500))
    model = build_classifier("small-cnn", num_classes=10, in_channels=1, **TINY)
    fit = fit_classifier(model, real=digits.subset(torch.arange(100)), synthetic=None, augment=None,
                         recipe=Recipe(steps=30, batch_size=16, eval_every=3, lr=2e-2), seed=0,
                         device=torch.device("cpu"), val=val)
    from diffaug.evaluation.recipe import evaluate_classifier

    assert evaluate_classifier(fit.model, val, device=torch.device("cpu"))[0] == pytest.approx(fit.best_val)
    assert dict(fit.history)[fit.best_step] == fit.best_val


# ---------------------------------------------------------------- the benchmark


def test_choices_use_validation_and_the_test_split_is_read_once_per_arm_and_cell(pool, monkeypatch):
    test = load_real(source="sklearn_digits", path=None, split="test", resolution=8, channels=1)
    calls = {"test": 0, "val": 0}
    original = ds.evaluate_classifier

    def counting(model, data, **kwargs):
        calls["test" if data is test else "val"] += 1
        return original(model, data, **kwargs)

    monkeypatch.setattr(ds, "evaluate_classifier", counting)
    spec = _spec(arms=["real", "real+aug", "real2x+aug"], seeds=[0, 1])
    result = ds.run_downstream(pool=pool, test=test, synthetic=None, spec=spec, device="cpu")
    assert calls["test"] == 3 * 2  # arms x seeds, chosen candidates only
    for run in result.runs:
        tried = [c for c in result.candidates if (c.arm, c.k, c.seed) == (run.arm, run.k, run.seed)]
        assert run.val == max(c.val for c in tried)  # the arm's result is its best validated candidate
        assert run.real_seen == run.steps * 16
    assert len([c for c in result.candidates if c.arm == "real+aug"]) == 2 * 2  # both recipes, both seeds
    chosen = {r.seed: r.setting for r in result.runs if r.arm == "real+aug"}
    assert {r.seed: r.setting for r in result.runs if r.arm == "real2x+aug"} == chosen  # reused, not re-tuned

    calls.update(test=0)
    tuned = ds.run_downstream(pool=pool, test=None, synthetic=None, spec=spec, device="cpu")
    assert calls["test"] == 0 and all(r.accuracy is None for r in tuned.runs)
    assert [c.val for c in tuned.candidates] == [c.val for c in result.candidates]  # tuning is deterministic


def test_teacher_filter_removes_planted_mislabelled_images(pool, digits):
    test = load_real(source="sklearn_digits", path=None, split="test", resolution=8, channels=1)
    good = test.subset(torch.arange(100))
    planted = test.subset(100 + torch.nonzero(test.labels[100:] == 0).flatten()[:8])  # none among good
    wrong = LabelledImages(planted.images, torch.full((8,), 1), planted.class_map)  # zeros labelled "1"
    synthetic = LabelledImages(torch.cat([good.images, wrong.images]), torch.cat([good.labels, wrong.labels]),
                               test.class_map)
    spec = _spec(recipe=Recipe(steps=150, batch_size=16, eval_every=50), ks=[20], augment=["crop"],
                 classifier_args={"width": 16})
    cell = ds._Cell(pool, 20, 0, pool.validation(), None, spec, torch.device("cpu"))
    cell.sets["planted"] = synthetic
    cell.run_arm("real")
    cell.run_arm("real+aug")
    kept, soft = cell._synthetic_for("planted", ds.SyntheticSetting(filter=0.5, labels="soft"))
    kept_rows = {bytes(x.numpy().tobytes()) for x in kept.images}
    assert not any(bytes(x.numpy().tobytes()) in kept_rows for x in wrong.images)
    assert len(kept) >= 60  # the correctly labelled images mostly stay
    assert soft.shape == (len(kept), 10) and torch.allclose(soft.sum(1), torch.ones(len(kept)))


def test_memorisation_finds_copies_and_not_new_images(digits):
    train = digits.subset(torch.arange(200))
    copies = train.subset(torch.arange(10))
    noise = LabelledImages(torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator()
                                         .manual_seed(0)), torch.arange(10), train.class_map)
    assert (nearest_ratio(copies.images, train.images) == 0).all()
    assert (nearest_ratio(noise.images, train.images) > 0.8).all()
    both = LabelledImages(torch.cat([copies.images, noise.images]), torch.cat([copies.labels, noise.labels]),
                          train.class_map)
    report = memorisation_report(both, train)
    assert report["near_copies"] == 10 and report["share"] == 0.5


def test_bad_settings_name_the_valid_choices():
    with pytest.raises(ValueError, match="real\\+syn"):
        ds.check_arms(["real", "real+synth"])
    with pytest.raises(ValueError, match="add real\\+aug"):
        ds.check_arms(["real", "real2x+aug"])
    with pytest.raises(ValueError, match="operations are"):
        _spec(augment=["crop", "flipp"])
    with pytest.raises(ValueError, match="hard"):
        ds.synthetic_grid([1.0], [1.0], [None], ["sotf"])
    with pytest.raises(ValueError, match="filter"):
        ds.synthetic_grid([1.0], [1.0], [1.5], ["hard"])


# ---------------------------------------------------------------- the command, with real exports


@pytest.fixture(scope="module")
def cell_exports(tmp_path_factory):
    """One tiny model per cell (k=5, seeds 0 and 1), trained-data config as the benchmark expects, exported
    twice: without guidance and at guidance scale 2 (two candidate sets per cell)."""
    root = tmp_path_factory.mktemp("cells")
    for seed in (0, 1):
        data = ("data.per_class_limit=5", f"data.seed={seed}", f"data.holdout_per_class={HOLDOUT}")
        checkpoint = make_checkpoint(root / f"model{seed}", overrides=data, seed=seed)
        for suffix, scale in (("", 1.0), ("-w2", 2.0)):
            export_augmentation_set(checkpoint, [f"export.out_dir={root / f'k5-s{seed}{suffix}'}", "export.per_class=6",
                                                 f"sampling.guidance_scale={scale}"], progress=False, device="cpu")
    return root


COMMON = ["data.source=sklearn_digits", "data.resolution=8", f"data.holdout_per_class={HOLDOUT}",
          "eval.downstream.ks=[5]", "eval.downstream.seeds=[0,1]", "eval.downstream.steps=30",
          "eval.downstream.eval_every=10", "eval.downstream.batch_size=16", "eval.downstream.classifier_args={width: 8}",
          "eval.downstream.device=cpu", "logging.logger=none"]


def test_downstream_command_with_per_cell_exports_writes_a_consistent_report(cell_exports, tmp_path):
    out = tmp_path / "report"
    status = eval_main(["downstream", *COMMON, "eval.downstream.arms=[real,real+aug,real+syn,real+aug+syn,syn]",
                        "eval.downstream.augment=[crop,crop+mixup]", "eval.downstream.syn_ratio=[0.5,1.0]",
                        "eval.downstream.syn_filter=[null,0.02]", f"eval.downstream.synthetic=['{cell_exports}/k{{k}}-s{{seed}}','{cell_exports}/k{{k}}-s{{seed}}-w2']",
                        "--out", str(out)])
    assert status == 0
    with open(out / "runs.csv") as handle:
        runs = list(csv.DictReader(handle))
    assert len(runs) == 5 * 2
    images = {r["arm"]: int(r["train_images"]) for r in runs if r["seed"] == "0"}
    assert images["real"] == 50 and images["syn"] == 60
    with open(out / "candidates.csv") as handle:
        candidates = list(csv.DictReader(handle))
    assert sum(c["arm"] == "real+syn" for c in candidates) == 2 * 2 * 4  # 2 sets x the 2 x 2 grid, both seeds
    assert {c["setting"].split(":")[0] for c in candidates if c["arm"] == "syn"} == {"k{k}-s{seed}", "k{k}-s{seed}-w2"}
    with open(out / "summary.csv") as handle:
        summary = {row["arm"]: row for row in csv.DictReader(handle)}
    acc = {(r["arm"], int(r["seed"])): float(r["accuracy"]) for r in runs}
    gain = np.array([acc[("real+syn", s)] - acc[("real", s)] for s in (0, 1)])
    row = summary["real+syn"]
    assert float(row["gain_vs_real"]) == pytest.approx(gain.mean(), abs=1e-5)
    assert float(row["gain_vs_real_ci95"]) == pytest.approx(12.706 * gain.std(ddof=1) / np.sqrt(2), abs=1e-4)
    chosen = json.loads((out / "chosen.json").read_text())
    assert set(chosen["k=5"]["seed=1"]) == {"real", "real+aug", "real+syn", "real+aug+syn", "syn"}
    report = (out / "report.md").read_text()
    assert "| 5 | real+syn |" in report and "## Memorisation" in report and "k{k}-s{seed}-w2" in report
    assert (out / "kshot.png").stat().st_size > 5000


def test_a_union_of_a_cells_sets_is_one_candidate_with_all_their_images(cell_exports, tmp_path):
    one, two = f"{cell_exports}/k{{k}}-s{{seed}}", f"{cell_exports}/k{{k}}-s{{seed}}-w2"
    out = tmp_path / "report"
    assert eval_main(["downstream", *COMMON, "eval.downstream.arms=[syn]", "eval.downstream.seeds=[1]",
                      f"eval.downstream.synthetic=['{one}',['{one}','{two}']]", "--out", str(out)]) == 0
    with open(out / "candidates.csv") as handle:
        tried = {c["setting"].split(":")[0]: int(c["train_images"]) for c in csv.DictReader(handle)}
    assert tried == {"k{k}-s{seed}": 60, "k{k}-s{seed}+k{k}-s{seed}-w2": 120}
    # The union's images are both sets', in order, labelled by class name.
    parts = [ds.ExportPattern(p, "sklearn_digits", 8, 1, (HOLDOUT, 0)) for p in (one, two)]
    union = ds.SetUnion(tuple(parts))(5, 1)
    first, second = parts[0](5, 1), parts[1](5, 1)
    assert torch.equal(union.images, torch.cat([first.images, second.images]))
    assert union.class_map.names[union.labels[len(first)]] == second.class_map.names[second.labels[0]]


def test_joining_sets_labels_every_image_by_its_class_name():
    a = LabelledImages(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ClassMap(("cat", "dog")))
    b = LabelledImages(torch.ones(3, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 2]), ClassMap(("emu", "dog", "cat")))
    joined = LabelledImages.concat([a, b])
    assert joined.class_map.names == ("cat", "dog", "emu")
    assert [joined.class_map.names[i] for i in joined.labels] == ["cat", "dog", "emu", "dog", "cat"]
    with pytest.raises(ValueError, match="different image shapes"):
        LabelledImages.concat([a, LabelledImages(torch.ones(1, 1, 8, 8, dtype=torch.uint8), torch.tensor([0]), a.class_map)])


def test_tune_command_never_reads_the_test_split(cell_exports, tmp_path, monkeypatch):
    import diffaug.evaluation.cli as cli

    original = cli.real_split
    splits = []
    monkeypatch.setattr(cli, "real_split", lambda cfg, *, split, **kw: splits.append(split) or original(cfg, split=split, **kw))
    assert eval_main(["tune", *COMMON, "eval.downstream.arms=[real,real+aug]", "--out", str(tmp_path / "t")]) == 0
    assert splits == ["train"]
    assert "Tuning only" in (tmp_path / "t" / "report.md").read_text()


def test_command_refuses_a_set_from_a_model_trained_on_other_images(cell_exports, tmp_path, capsys):
    # The seed-0 set offered to the seed-1 cell: its model saw labelled images the cell does not have.
    status = eval_main(["downstream", *COMMON, "eval.downstream.arms=[real,real+syn]",
                        f"eval.downstream.synthetic=[{cell_exports}/k5-s0]", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert status == 2 and "data.seed=0 (the cell needs 1)" in err and "{k} and {seed}" in err
    status = eval_main(["downstream", *[c for c in COMMON if "holdout" not in c], "--out", str(tmp_path / "r")])
    assert status == 2 and "data.holdout_per_class" in capsys.readouterr().err


def test_cells_in_parallel_processes_give_the_same_results(pool):
    test = load_real(source="sklearn_digits", path=None, split="test", resolution=8, channels=1)
    spec = _spec(seeds=[0, 1], recipe=Recipe(steps=20, batch_size=16, eval_every=10), augment=["crop"])
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' setting: the same kernels, so the same bits
    try:
        serial = ds.run_downstream(pool=pool, test=test, synthetic=None, spec=spec, device="cpu")
    finally:
        torch.set_num_threads(before)
    parallel = ds.run_downstream(pool=pool, test=test, synthetic=None, spec=spec, device="cpu", workers=2)
    assert [(r.arm, r.seed, r.val, r.accuracy) for r in parallel.runs] == [(r.arm, r.seed, r.val, r.accuracy)
                                                                          for r in serial.runs]


def test_fit_cache_reuses_identical_fits_bit_for_bit_and_trains_only_what_changed(pool, tmp_path, monkeypatch):
    test = load_real(source="sklearn_digits", path=None, split="test", resolution=8, channels=1)
    trained = {"n": 0}
    original = ds.fit_classifier

    def counting(*args, **kwargs):
        trained["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(ds, "fit_classifier", counting)
    recipe = Recipe(steps=20, batch_size=16, eval_every=10)
    plain = ds.run_downstream(pool=pool, test=test, synthetic=None, spec=_spec(recipe=recipe), device="cpu")
    assert trained["n"] == 3  # real, and real+aug's two recipes
    cache = tmp_path / "cache"
    first = ds.run_downstream(pool=pool, test=test, synthetic=None, device="cpu",
                              spec=_spec(recipe=recipe, cache_dir=str(cache)))
    assert trained["n"] == 6 and len(list(cache.glob("*.json"))) == 3
    again = ds.run_downstream(pool=pool, test=test, synthetic=None, device="cpu",
                              spec=_spec(recipe=recipe, cache_dir=str(cache), arms=["real", "real+aug", "real2x"]))
    assert trained["n"] == 7  # only real2x is new
    rows = lambda result: [(r.arm, r.setting, r.val, r.accuracy, r.per_class, r.best_step) for r in result.runs]
    assert rows(first) == rows(plain) and rows(again)[:2] == rows(plain)  # the same bits, cached or not
    ds.run_downstream(pool=pool, test=test, synthetic=None, device="cpu",
                      spec=_spec(recipe=Recipe(steps=30, batch_size=16, eval_every=10), cache_dir=str(cache)))
    assert trained["n"] == 10  # another budget is another classifier


def test_the_summary_reports_each_arms_spread_paired_gain_and_mean_set_size():
    """Seeds that chose sets of different sizes (a union on one, one set on another) report their mean size;
    gains are paired by seed: a gain constant across seeds has a zero-width interval."""
    names = tuple(str(c) for c in range(10))

    def run(arm: str, seed: int, accuracy: float, images: int) -> ds.RunResult:
        return ds.RunResult(arm=arm, k=10, seed=seed, setting="-", val=accuracy, accuracy=accuracy,
                            per_class=[accuracy] * 10, train_images=images, best_step=1, steps=2,
                            still_rising=False, real_seen=10)

    runs = [run("real+aug", 0, 0.70, 100), run("real+aug", 1, 0.60, 100), run("real+aug", 2, 0.65, 100),
            run("real+aug+syn", 0, 0.73, 1100), run("real+aug+syn", 1, 0.63, 2100),
            run("real+aug+syn", 2, 0.68, 2100)]
    result = ds.DownstreamResult(class_names=names, arms=["real+aug", "real+aug+syn"], ks=[10], seeds=[0, 1, 2],
                                 runs=runs, candidates=[])
    rows = {row["arm"]: row for row in result.summary()}
    syn = rows["real+aug+syn"]
    assert syn["train_images"] == 1767 and rows["real+aug"]["train_images"] == 100
    assert syn["mean"] == pytest.approx(0.68) and syn["std"] == pytest.approx(0.05)
    assert syn["gain_vs_real+aug"] == pytest.approx(0.03) and syn["gain_vs_real+aug_ci95"] == pytest.approx(0, abs=1e-9)
