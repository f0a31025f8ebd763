"""diffaug as a wheel: the bundled configs travel inside it, and `diffaug train` runs from any folder.

The wheel is built from this checkout without network (no build isolation: the venv's setuptools) and
installed with --target into a temporary folder that goes first on PYTHONPATH, so the commands below import
the installed copy, not the checkout, from a working directory with no configs/ of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BUNDLED = sorted(p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy of the files git would commit: setuptools' build/ folder keeps files a later build
    # no longer has, and the checkout stays as it was.
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():  # a file deleted but not yet committed is still listed
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = out.glob("diffaug-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check",
         "-q", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def _diffaug(installed: Path, cwd: Path, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PYTHONPATH=str(installed), OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    return subprocess.run([sys.executable, "-m", "diffaug", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_wheel_holds_every_bundled_config(wheel):
    assert len(BUNDLED) >= 10  # data/, model/, objective/ and experiment/ presets
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"diffaug/configs/{name}" for name in BUNDLED} <= names
    assert not any(name.startswith("configs/") for name in names)  # no top-level "configs" package


def test_installed_copy_resolves_bundled_config_and_includes(installed, tmp_path):
    probe = ("import diffaug, diffaug.config.load as load; "
             "print(diffaug.__file__); print(load.CONFIGS_DIR.joinpath('experiment/demo.yaml'))")
    env = {**os.environ, "PYTHONPATH": str(installed)}
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    module_file, demo = done.stdout.split()
    assert Path(module_file).is_relative_to(installed)
    assert Path(demo).is_relative_to(installed) and Path(demo).is_file()

    # experiment/demo.yaml includes ../data, ../model and ../objective files: resolved inside the package.
    done = _diffaug(installed, tmp_path, "config", "experiment/demo.yaml", "training.max_steps=3")
    assert done.returncode == 0, done.stderr
    cfg = yaml.safe_load(done.stdout)
    assert cfg["name"] == "demo" and cfg["training"]["max_steps"] == 3
    assert cfg["data"]["source"] == "sklearn_digits"  # from data/digits.yaml
    assert cfg["model"]["net"] == "unet-tiny"  # from model/unet-tiny.yaml
    assert (cfg["objective"]["process"], cfg["objective"]["prediction"]) == ("ddpm", "eps")  # objective/ddpm.yaml


@pytest.mark.slow
def test_installed_diffaug_trains_from_a_bundled_config(installed, tmp_path):
    run_dir = tmp_path / "run"
    done = _diffaug(installed, tmp_path, "train", "experiment/demo.yaml", "training.max_steps=2",
                    "training.val_every_n_steps=null", "training.sample_every_n_steps=null",
                    f"run_dir={run_dir}", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "model.safetensors").is_file()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["name"] == "demo" and saved["training"]["max_steps"] == 2
    assert not (tmp_path / "configs").exists()
