"""sbatch scripts rendered from the config, without a cluster: #SBATCH lines, quoting, errors, the CLI."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from diffaug.checkpoint import save_weights
from diffaug.cluster.cli import render_export, render_train, slurm_main
from diffaug.cluster.render import SIGNAL_LEAD_S, example_scripts, time_limit_seconds
from diffaug.cluster.submit import SubmitError, parse_job_id, submit_script
from diffaug.config import ConfigError, load_config, to_dict

REPO = Path(__file__).resolve().parents[1]


def sbatch_options(script: str) -> list[str]:
    return re.findall(r"^#SBATCH (\S+)$", script, flags=re.MULTILINE)


def command_words(script: str, program: str) -> list[str]:
    """The words bash passes to ``python -m diffaug PROGRAM`` (up to "$@"), as bash itself expands them."""
    line = script.split(f'"$PYTHON" -m diffaug {program} ', 1)[1].split(' "$@"', 1)[0]
    result = subprocess.run(["bash", "-c", f"printf '%s\\0' {line}"], capture_output=True, text=True,
                            check=True)
    return result.stdout.split("\0")[:-1]


def test_train_script_takes_every_setting_of_the_cluster_section(tmp_path):
    script = render_train([
        "cluster.nodes=2", "cluster.gpus_per_node=4", "cluster.cpus_per_task=6", "cluster.partition=gpu",
        "cluster.account=proj1", "cluster.mem=64G", "cluster.time=2-00:00:00", "name=big run",
        "cluster.extra_sbatch=['--qos=high', '#SBATCH --constraint=a100']",
    ], log_dir=str(tmp_path / "logs"))
    assert sbatch_options(script) == [
        "--job-name=diffaug-train-big_run", "--nodes=2",
        "--ntasks-per-node=4", "--gpus-per-node=4",  # one task (DDP rank) per GPU
        "--cpus-per-task=6", "--mem=64G", "--time=2-00:00:00", "--partition=gpu", "--account=proj1",
        f"--chdir={Path.cwd()}", f"--output={tmp_path}/logs/%x-%j.out", "--open-mode=append",
        "--requeue", f"--signal=USR1@{SIGNAL_LEAD_S}",
        "--qos=high", "--constraint=a100",  # extra lines last, so they can override the ones above
    ]
    assert script.startswith("#!/bin/bash\n")
    assert 'srun --kill-on-bad-exit=1 --cpus-per-task="$SLURM_CPUS_PER_TASK"' in script
    assert 'training.devices="$SLURM_NTASKS_PER_NODE" training.num_nodes="$SLURM_JOB_NUM_NODES"' in script


def test_overrides_reach_the_program_unchanged_and_never_run(tmp_path):
    marker = tmp_path / "executed"
    overrides = [
        "model.args={model_channels: 8, channel_mult: [1]}",
        "name=it's $(touch " + str(marker) + ") `touch " + str(marker) + "` $HOME",
        'data.class_names=["a b", "c\\"d"]',
    ]
    script = render_train(["configs/experiment/demo.yaml", *overrides], log_dir="logs")
    words = command_words(script, "train")
    assert words == ["training.resume=auto", "configs/experiment/demo.yaml", *overrides]
    assert not marker.exists()
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # the whole script parses


def test_cpu_job_runs_one_task_per_device_and_asks_for_no_gpu():
    script = render_train(["cluster.gpus_per_node=0", "training.accelerator=cpu", "training.devices=3"])
    options = sbatch_options(script)
    assert "--ntasks-per-node=3" in options
    assert not [o for o in options if o.startswith("--gpus")]
    assert "--output=slurm-logs/%x-%j.out" in options


def test_without_requeue_no_signal_is_asked_for():
    options = sbatch_options(render_train(["cluster.requeue=false"]))
    assert "--no-requeue" in options and "--requeue" not in options
    assert not [o for o in options if o.startswith("--signal")]


@pytest.mark.parametrize("override, message", [
    ("cluster.extra_sbatch=['--job-name=bash']", "Lightning then ignores SLURM"),
    ("cluster.extra_sbatch=['qos=high']", "each entry is one sbatch option"),
    ("cluster.time=tomorrow", "D-HH:MM:SS"),
    ("cluster.partition='gpu long'", "cluster.partition"),
    ("cluster.gpus_per_node=-1", "cluster.gpus_per_node"),
    # The requeue signal would come at the start and the job requeue itself forever.
    ("cluster.time=5", "cluster.time=5 leaves no time to work"),
])
def test_bad_cluster_settings_are_refused_with_the_fix(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        render_train([override])


def test_short_jobs_without_requeue_are_fine_and_log_paths_must_be_one_word():
    assert "--time=5" in sbatch_options(render_train(["cluster.time=5", "cluster.requeue=false"]))
    with pytest.raises(ConfigError, match="invalid log path"):
        render_train([], log_dir="my logs")


@pytest.mark.parametrize("text, seconds", [
    ("30", 1800), ("30:15", 1815), ("01:02:03", 3723), ("2-03", 183600), ("2-03:04", 183840),
    ("2-03:04:05", 183845), ("UNLIMITED", None),
])
def test_slurm_time_formats(text, seconds):
    assert time_limit_seconds(text) == seconds


# ---------------------------------------------------------------- export arrays


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained model.safetensors with its config, whose cluster section asks for 2 nodes x 2 GPUs."""
    from diffaug.build import build_denoiser

    cfg = load_config([], ["name=digits", "data.resolution=8",
                           "model.args={model_channels: 8, channel_mult: [1], norm_groups: 4}",
                           "cluster.nodes=2", "cluster.gpus_per_node=2", "cluster.partition=train"])
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    denoiser = build_denoiser(cfg, num_classes=10)
    return save_weights(path, denoiser.state_dict(), config=to_dict(cfg),
                        class_names=[str(i) for i in range(10)])


def test_export_array_has_one_task_per_part_and_requeues_from_the_batch_shell(checkpoint):
    script = render_export([str(checkpoint), "export.per_class=5", "cluster.partition=infer",
                            "cluster.time=30"], parts=3)
    options = sbatch_options(script)
    assert options[:6] == ["--job-name=diffaug-export-digits", "--array=0-2", "--nodes=1",
                           "--ntasks-per-node=1", "--gpus-per-node=1", "--cpus-per-task=8"]
    assert "--partition=infer" in options and "--time=30" in options  # cluster.* overrides win
    assert "--output=slurm-logs/%x-%A_%a.out" in options
    assert f"--signal=B:USR1@{SIGNAL_LEAD_S}" in options and "--requeue" in options
    assert 'trap requeue USR1' in script and 'scontrol requeue "$TASK"' in script
    # cluster.* settings shaped the job; the exporter gets only what it accepts.
    assert command_words(script, "export") == [str(checkpoint), "export.per_class=5"]
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_export_parts_default_to_the_gpus_of_the_cluster_section(checkpoint):
    assert "--array=0-3" in sbatch_options(render_export([str(checkpoint)]))  # 2 nodes x 2 GPUs


def test_export_overrides_are_checked_before_submission(checkpoint):
    with pytest.raises(ConfigError, match="cannot override 'model.net'"):
        render_export([str(checkpoint), "model.net=dit-s-2"])
    with pytest.raises(ConfigError, match="--parts must be at least 1"):
        render_export([str(checkpoint)], parts=0)


# ---------------------------------------------------------------- the scripts in slurm/ and the command line


def test_scripts_in_the_repository_are_the_rendered_ones():
    for name, text in example_scripts().items():
        path = REPO / "slurm" / name
        assert path.read_text() == text, (
            f"{path} is stale; rewrite it with: python -c \"from diffaug.cluster.render import "
            "example_scripts; [open('slurm/' + n, 'w').write(t) for n, t in example_scripts().items()]\"")
        subprocess.run(["bash", "-n", str(path)], check=True)
    single = sbatch_options((REPO / "slurm" / "train_single_node.sbatch").read_text())
    multi = sbatch_options((REPO / "slurm" / "train_multi_node.sbatch").read_text())
    assert "--nodes=1" in single and "--nodes=2" in multi
    for options in (single, multi):
        assert "--ntasks-per-node=4" in options and "--gpus-per-node=4" in options


def test_dry_run_prints_the_script(capsys):
    assert slurm_main(["slurm", "submit", "train", "cluster.gpus_per_node=2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#!/bin/bash\n") and "#SBATCH --ntasks-per-node=2" in out


def test_command_line_errors_exit_2_with_the_reason(tmp_path, capsys):
    assert slurm_main(["slurm", "submit", "train", "cluster.nodes=0", "--dry-run"]) == 2
    assert "cluster.nodes" in capsys.readouterr().err
    missing = tmp_path / "missing.ckpt"
    assert slurm_main(["slurm", "submit", "export", str(missing), "--dry-run"]) == 2
    assert f"checkpoint {missing} does not exist" in capsys.readouterr().err


def test_submission_errors_say_what_to_do():
    with pytest.raises(SubmitError, match="not on PATH"):
        submit_script("#!/bin/bash\n", sbatch="diffaug-no-such-sbatch")
    assert parse_job_id("4242\n") == "4242" and parse_job_id("17;cluster-a\n") == "17"
    with pytest.raises(SubmitError, match="no job id"):
        parse_job_id("sbatch: error: nope")


def test_quoting_round_trips_through_shlex():
    # What the renderer relies on: shlex.quote output is one shell word whatever the text.
    for text in ("a b", "it's", "$(x)", "", "\n", "é"):
        assert shlex.split(shlex.quote(text)) == [text]
