"""Bad input through the real command line: every case exits non-zero with one clear line that names the
file or setting, what is wrong and the fix, prints no traceback, and leaves nothing half-written.

Each fresh process pays seconds for importing torch and Lightning, so most cases run one after another in a
single subprocess (tests/scripts/cli_cases.py calls ``diffaug.cli.main``, what the console script calls,
with its output captured at the file-descriptor level); the two cases the issue found as raw tracebacks
also run as processes of their own (``python -m diffaug``), concurrently with that batch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from diffaug.sampling import export_augmentation_set
from tests.data_helpers import make_class_folders, write_id_shards
from tests.export_helpers import make_checkpoint, tree_digest

ROOT = Path(__file__).resolve().parents[1]
# A two-step CPU run on 8x8 images: reaching the bad input costs milliseconds once the imports are done.
TRAIN = ["data.resolution=8", "training.max_steps=2", "training.accelerator=cpu", "training.devices=1",
         "logging.logger=none", "logging.progress_bar=false", "model.args={model_channels: 16}"]


@dataclass
class Case:
    argv: list[str]
    expect: list[str]  # substrings of the message: the file or key, the problem, the fix
    absent: list[Path] = field(default_factory=list)  # must not exist afterwards
    unchanged: Path | None = None  # a tree whose files must stay byte for byte
    during_fit: bool = False  # fails inside Lightning's fit, after its own start-up lines
    own_process: bool = False


class Unpickles:
    """Unpickling this creates ``marker``: code run by a load."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _cut(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _cases(d: Path) -> dict[str, Case]:
    model = make_checkpoint(d / "model")
    other = make_checkpoint(d / "other", seed=1)
    cut_weights = d / "cut.safetensors"
    cut_weights.write_bytes(model.read_bytes())
    _cut(cut_weights)
    (d / "zero.safetensors").write_bytes(b"")
    marker = d / "pwned"
    evil = d / "evil.ckpt"
    meta = {"config": {}, "class_names": ["a"]}
    torch.save({"state_dict": {}, "diffaug": meta, "x": Unpickles(marker)}, evil)
    torch.save({"diffaug": meta, "w": torch.zeros(1000)}, d / "cut.ckpt")
    _cut(d / "cut.ckpt", 0.3)
    (d / "bad.yaml").write_text("training:\n  lr: [1e-4\n  max_steps: 3\n")
    (d / "bad-key.yaml").write_text("trainig:\n  lr: 1.0e-4\n")
    images = d / "images"
    make_class_folders(images, {"a": 4, "b": 4})
    _cut(images / "a" / "img_001.png")
    (images / "b" / "img_002.png").write_bytes(b"")
    write_id_shards(d / "shards", 24, maxcount=8)
    _cut(d / "shards" / "shard-000001.tar")
    shards = f"data.path={d}/shards/shard-{{000000..000002}}.tar"
    done = d / "done-export"
    export_augmentation_set(model, ["export.per_class=1", f"export.out_dir={done}"], progress=False)
    run = d / "runs"
    return {
        "unknown key": Case(["config", "training.lrr=1e-4"], ["'training.lrr'", "Did you mean 'lr'"]),
        "unknown key in a file": Case(["config", str(d / "bad-key.yaml")],
                                      ["unknown config key 'trainig'", "bad-key.yaml", "valid keys"]),
        "bad YAML": Case(["config", str(d / "bad.yaml")],
                         ["bad.yaml is not valid YAML", "line 3, column 12", "flow sequence"]),
        "negative guidance": Case(
            ["sample", str(model), "sampling.guidance_scale=-1", "--out", str(d / "g1.png")],
            ["sampling.guidance_scale", "-1.0", ">= 0"], absent=[d / "g1.png"]),
        "zero steps": Case(
            ["export", str(model), "sampling.steps=0", "export.per_class=1", f"export.out_dir={d / 'x1'}"],
            ["sampling.steps", "at least 1"], absent=[d / "x1"]),
        "sampler option out of range": Case(["config", "sampling.sampler_args={eta: 2}"],
                                            ["sampling.sampler_args", "eta must be in [0, 1]"]),
        "unknown sampler": Case(["config", "sampling.sampler=dpm"],
                                ["'sampling.sampler'", "Did you mean 'ddpm'"]),
        "corrupt and zero-byte images": Case(
            ["train", "data.source=folder", f"data.path={images}", "data.on_corrupt=fail",
             "data.batch_size=2", "data.val_fraction=0", f"run_dir={run / 'images'}", *TRAIN],
            ["images/", ".png", "on_corrupt"],
            absent=[run / "images" / "checkpoints" / "last.ckpt", run / "images" / "model.safetensors"],
            during_fit=True),
        "truncated shard": Case(
            ["train", "data.source=shards", shards, "data.on_corrupt=fail", "data.batch_size=4",
             f"run_dir={run / 'shards'}", *TRAIN],
            ["shard-000001.tar", "truncated", "on_corrupt='skip'"],
            absent=[run / "shards" / "checkpoints" / "last.ckpt", run / "shards" / "model.safetensors"],
            during_fit=True),
        "fewer samples than a batch": Case(
            ["train", "data.source=shards", shards, f"run_dir={run / 'small'}", *TRAIN],
            ["hold 24 samples", "batch_size=64", "lower batch_size"], absent=[run / "small"]),
        "malicious pickle to resume": Case(
            ["train", f"training.resume={evil}", f"run_dir={run / 'evil'}", *TRAIN],
            ["training.resume", "evil.ckpt", "refusing to load", "source you trust"],
            absent=[run / "evil", marker], own_process=True),
        "truncated checkpoint to resume": Case(
            ["train", f"training.resume={d / 'cut.ckpt'}", f"run_dir={run / 'cut'}", *TRAIN],
            ["cut.ckpt", "truncated or corrupt", "another checkpoint"], absent=[run / "cut"]),
        "truncated safetensors": Case(
            ["sample", str(cut_weights), "--out", str(d / "g2.png")],
            ["cut.safetensors", "truncated or corrupt", "Copy it again"], absent=[d / "g2.png"],
            own_process=True),
        "zero-byte safetensors": Case(
            ["export", str(d / "zero.safetensors"), "export.per_class=1", f"export.out_dir={d / 'x2'}"],
            ["zero.safetensors", "truncated or corrupt"], absent=[d / "x2"]),
        "malicious pickle to export": Case(
            ["export", str(evil), "export.per_class=1", f"export.out_dir={d / 'x3'}"],
            ["evil.ckpt", "refusing to load"], absent=[d / "x3", marker]),
        "export into another export": Case(
            ["export", str(other), "export.per_class=1", f"export.out_dir={done}"],
            ["done-export already holds a finished export", "choose another export.out_dir"], unchanged=done),
        "missing checkpoint": Case(["sample", str(d / "missing.safetensors")],
                                   ["missing.safetensors does not exist"]),
    }


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """{name: (case, exit code, stdout, stderr, tree digest before or None)} for every case."""
    d = tmp_path_factory.mktemp("bad-input")
    cases = _cases(d)
    before = {name: tree_digest(c.unchanged) for name, c in cases.items() if c.unchanged is not None}
    batched = [name for name, c in cases.items() if not c.own_process]
    (d / "cases.json").write_text(json.dumps([{"argv": cases[name].argv} for name in batched]))
    own = {name: subprocess.Popen([sys.executable, "-m", "diffaug", *c.argv], cwd=d, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for name, c in cases.items() if c.own_process}
    subprocess.run([sys.executable, str(ROOT / "tests" / "scripts" / "cli_cases.py"), str(d / "cases.json"),
                    str(d / "results.json")], cwd=ROOT, check=True, timeout=300)
    results = dict(zip(batched, json.loads((d / "results.json").read_text()), strict=True))
    for name, process in own.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = {"code": process.returncode, "stdout": stdout, "stderr": stderr}
    return {name: (cases[name], results[name], before.get(name)) for name in cases}


CASE_NAMES = [
    "unknown key", "unknown key in a file", "bad YAML", "negative guidance", "zero steps",
    "sampler option out of range", "unknown sampler", "corrupt and zero-byte images", "truncated shard",
    "fewer samples than a batch", "malicious pickle to resume", "truncated checkpoint to resume",
    "truncated safetensors", "zero-byte safetensors", "malicious pickle to export",
    "export into another export", "missing checkpoint",
]


def test_every_case_is_listed(outcomes):
    assert sorted(outcomes) == sorted(CASE_NAMES)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_gives_one_clear_line_and_leaves_nothing(outcomes, name):
    case, result, before = outcomes[name]
    stderr = result["stderr"]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert result["code"] == 2, f"exit code {result['code']}; stderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    ours = [line for line in lines if line.startswith("diffaug:")]
    assert len(ours) == 1 and lines[-1] == ours[0], stderr
    if not case.during_fit:  # before Lightning starts, the message is all there is
        assert lines == ours, stderr
    for text in case.expect:
        assert text in ours[0], f"{text!r} not in {ours[0]!r}"
    for path in case.absent:
        assert not path.exists(), f"{path} was left behind"
    if case.unchanged is not None:
        assert tree_digest(case.unchanged) == before
