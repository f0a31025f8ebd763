"""Options may sit anywhere among a command's config files, checkpoint and key=value overrides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from diffaug.cli import build_parser as diffaug_parser
from diffaug.config.argv import parse_items_anywhere
from diffaug.evaluation.cli import build_parser as eval_parser

REPO = Path(__file__).resolve().parents[1]


def test_items_after_options_keep_their_order():
    args = parse_items_anywhere(diffaug_parser(), ["sample", "m.safetensors", "sampling.steps=3", "--per-class",
                                                   "2", "sampling.steps=4", "--out", "g.png", "sampling.seed=5"])
    assert args.items == ["m.safetensors", "sampling.steps=3", "sampling.steps=4", "sampling.seed=5"]
    assert (args.per_class, args.out) == (2, "g.png")
    args = parse_items_anywhere(eval_parser(), ["downstream", "a.yaml", "--out", "r", "eval.downstream.ks=[10]"])
    assert (args.items, args.out) == (["a.yaml", "eval.downstream.ks=[10]"], "r")
    args = parse_items_anywhere(diffaug_parser(), ["slurm", "submit", "train", "a.yaml", "--dry-run", "b.yaml",
                                                   "cluster.nodes=2"])
    assert (args.items, args.dry_run) == (["a.yaml", "b.yaml", "cluster.nodes=2"], True)


@pytest.mark.parametrize("argv, named", [
    (["sample", "m.safetensors", "--grid", "g.png"], "--grid"),  # an option of sample.py, not of this one
    (["convert", "dit", "a.pt", "--out", "b.safetensors", "stray"], "stray"),  # convert takes no overrides
])
def test_unknown_options_and_stray_arguments_are_refused(argv, named, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_items_anywhere(diffaug_parser(), argv)
    assert stop.value.code == 2
    assert f"unrecognized arguments: {named}" in capsys.readouterr().err


def test_sample_py_takes_overrides_after_grid_as_its_docstring_shows(tmp_path):
    # The usage line of sample.py's docstring; a checkpoint that does not exist gets past argparse to the
    # check that names it, instead of a usage error about the overrides.
    missing = tmp_path / "last.ckpt"
    done = subprocess.run([sys.executable, "sample.py", str(missing), "--grid", str(tmp_path / "grid.png"),
                           "sampling.sampler=ddim", "sampling.steps=25"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "unrecognized arguments" not in done.stderr
    assert done.returncode != 0 and str(missing) in done.stderr, done.stderr
