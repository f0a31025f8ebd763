"""Config loading: schema defaults < YAML (with includes) < command line, and every validation error."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diffaug.config import ConfigError, config_from_dict, config_hash, load_config, save_config, to_dict

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_files_and_overrides_in_order(tmp_path):
    write(tmp_path / "base.yaml", {"training": {"max_steps": 10, "lr": 1e-3}, "data": {"resolution": 8}})
    exp = write(tmp_path / "exp.yaml", {"include": ["base.yaml"], "training": {"max_steps": 20}})
    cfg = load_config([exp], ["training.lr=5e-4", "data.batch_size=7"])
    assert cfg.training.max_steps == 20  # the experiment file overrides its include
    assert cfg.training.lr == pytest.approx(5e-4)  # the command line overrides both
    assert cfg.data.resolution == 8  # from the include
    assert cfg.data.batch_size == 7
    assert cfg.training.warmup_steps == 100  # untouched schema default


def test_run_dir_interpolates_the_name():
    cfg = load_config([], ["name=abc"])
    assert to_dict(cfg)["run_dir"] == "runs/abc"


def test_unknown_key_lists_valid_keys_and_suggests(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config([], ["training.max_step=5"])
    message = str(err.value)
    assert "training.max_step" in message and "max_steps" in message and "lr_schedule" in message
    assert "Did you mean 'max_steps'?" in message


def test_unknown_section_in_a_file_names_the_file(tmp_path):
    bad = write(tmp_path / "bad.yaml", {"trainig": {"max_steps": 5}})
    with pytest.raises(ConfigError) as err:
        load_config([bad])
    message = str(err.value)
    assert "trainig" in message and str(bad) in message and "Did you mean 'training'?" in message


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError) as err:
        load_config([], ["training.max_steps=many"])
    assert "training.max_steps" in str(err.value) and "many" in str(err.value)


def test_literal_choice_lists_allowed_values_and_suggests():
    with pytest.raises(ConfigError) as err:
        load_config([], ["objective.process=ddpn"])
    message = str(err.value)
    assert "objective.process" in message
    for choice in ("ddpm", "ncsn", "vp", "subvp", "ve"):
        assert choice in message
    assert "Did you mean 'ddpm'?" in message


def test_registry_names_are_checked_at_load():
    with pytest.raises(ConfigError) as err:
        load_config([], ["model.net=unet-tiyn"])
    assert "model.net" in str(err.value) and "unet-tiny" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config([], ["sampling.sampler=dimm"])
    assert "sampling.sampler" in str(err.value) and "ddim" in str(err.value)


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("data.channels=7", "data.channels"),
        ("training.lr=0", "training.lr"),
        ("export.formats=[folder,zip]", "export.formats"),
        ("data.source=folder", "data.path"),
        ("sampling.guidance_scale=-0.5", "sampling.guidance_scale"),
        ("sampling.guidance_scale=inf", "sampling.guidance_scale"),
        ("sampling.class_guidance={a: -1}", "sampling.class_guidance"),
        ("sampling.steps=0", "sampling.steps"),
        ("sampling.sampler_args={eta: 1.5}", "sampling.sampler_args"),
        ("sampling.sampler_args={snr: 0.1}", "sampling.sampler_args"),  # ddim has no snr
        ("export.shard_size=0", "export.shard_size"),
        ("export.min_confidence=1.5", "export.min_confidence"),
    ],
)
def test_out_of_range_values_fail_with_the_rule(override, key):
    with pytest.raises(ConfigError) as err:
        load_config([], [override])
    assert key in str(err.value)


def test_sampler_options_in_range_load():
    load_config([], ["sampling.sampler=pc", "sampling.sampler_args={snr: 0.2, corrector_steps: 0}",
                     "sampling.guidance_scale=0"])


def test_malformed_override_and_missing_file_and_include_cycle(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config([], ["training.max_steps"])
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "nope.yaml"])
    write(tmp_path / "a.yaml", {"include": ["b.yaml"]})
    write(tmp_path / "b.yaml", {"include": ["a.yaml"]})
    with pytest.raises(ConfigError, match="cycle"):
        load_config([tmp_path / "a.yaml"])


def test_saved_config_round_trips_and_hash_tracks_values(tmp_path):
    cfg = load_config([], ["name=x", "training.max_steps=3", "model.args={model_channels: 16}"])
    path = save_config(cfg, tmp_path / "config.yaml")
    again = config_from_dict(yaml.safe_load(path.read_text()))
    assert to_dict(again) == to_dict(cfg)
    assert config_hash(again) == config_hash(cfg)
    assert config_hash(load_config([], ["name=x", "training.max_steps=4"])) != config_hash(cfg)


def test_one_string_where_a_list_is_expected_becomes_a_one_item_list(tmp_path):
    # A command-line value, and a config saved when the key still held one string, both load.
    cfg = load_config([], ["eval.downstream.synthetic=runs/a/export"])
    assert list(cfg.eval.downstream.synthetic) == ["runs/a/export"]
    saved = to_dict(load_config([], ["name=old"]))
    saved["eval"]["downstream"]["synthetic"] = "runs/{k}/export"
    assert list(config_from_dict(saved).eval.downstream.synthetic) == ["runs/{k}/export"]
    assert list(load_config([], ["eval.downstream.synthetic=[a,b]"]).eval.downstream.synthetic) == ["a", "b"]
    union = load_config([], ["eval.downstream.synthetic=[a,[a,b]]"]).eval.downstream.synthetic
    assert union[0] == "a" and list(union[1]) == ["a", "b"]
    for bad in ("[a,[a]]", "[a,[b,b]]", "[a,3]"):
        with pytest.raises(ConfigError, match="a list of two or more different ones"):
            load_config([], [f"eval.downstream.synthetic={bad}"])
    with pytest.raises(ConfigError, match="eval.downstream.syn_ratio"):
        load_config([], ["eval.downstream.syn_ratio=fast"])  # a string is still no list of floats


def test_every_shipped_config_file_loads():
    files = sorted(CONFIGS.rglob("*.yaml"))
    assert len(files) >= 5
    for path in files:
        load_config([path])


def test_cli_prints_resolved_config_and_reports_errors():
    ok = subprocess.run([sys.executable, "-m", "diffaug", "config", "training.max_steps=42"],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert yaml.safe_load(ok.stdout)["training"]["max_steps"] == 42
    bad = subprocess.run([sys.executable, "-m", "diffaug", "config", "training.lrr=1"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert "Did you mean 'lr'?" in bad.stderr


def test_dangling_interpolation_fails_at_load_naming_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("run_dir: runs/${nmae}\n")
    with pytest.raises(ConfigError, match=r"'run_dir'.*nmae"):
        load_config([path])


@pytest.mark.parametrize(
    "overrides, rule",
    [
        (["sampling.random_guidance=[3.0,1.0]"], "lo <= hi"),
        (["sampling.random_guidance=[-1.0,2.0]"], "lo <= hi"),
        (["sampling.random_guidance=[1.0]"], "lo <= hi"),
        (["sampling.random_guidance=[1.0,inf]"], "lo <= hi"),
        (["sampling.random_guidance=[1.0,3.0]", "sampling.class_guidance={a: 2}"], "class_guidance"),
    ],
)
def test_random_guidance_out_of_range_fails_at_load(overrides, rule):
    with pytest.raises(ConfigError, match=rf"sampling.random_guidance.*{rule}"):
        load_config([], overrides)
    assert load_config([], ["sampling.random_guidance=[1,4]"]).sampling.random_guidance == [1.0, 4.0]


@pytest.mark.parametrize("interval", ["[2.0,1.0]", "[-1.0,1.0]", "[1.0]"])
def test_guidance_interval_out_of_range_fails_at_load(interval):
    with pytest.raises(ConfigError, match=r"sampling.guidance_interval.*0 <= lo < hi"):
        load_config([], [f"sampling.guidance_interval={interval}"])
    assert load_config([], ["sampling.guidance_interval=[0.28,5.42]"]).sampling.guidance_interval == [0.28, 5.42]


@pytest.mark.parametrize(
    "override, key, names, suggestion",
    [
        ("data.source=foldr", "data.source", ("folder", "idx", "shards", "sklearn_digits"), "folder"),
        ("objective.weighting=min_snrr", "objective.weighting", ("simple", "sigma2", "edm"), "min_snr"),
    ],
)
def test_registry_names_list_the_registered_ones_and_suggest(override, key, names, suggestion):
    with pytest.raises(ConfigError) as err:
        load_config([], [override])
    message = str(err.value)
    assert f"'{key}'" in message and all(name in message for name in names)
    assert f"Did you mean '{suggestion}'?" in message


def test_objective_args_are_checked_against_the_objective():
    with pytest.raises(ConfigError) as err:
        load_config([], ["objective.weighting=min_snr", "objective.args={min_snr_gama: 2}"])
    message = str(err.value)
    assert "'objective.args'" in message and "min_snr_gama" in message
    assert "target, min_snr_gamma" in message  # the valid options
    with pytest.raises(ConfigError, match="objective.args.*min_snr_gamma must be positive"):
        load_config([], ["objective.args={min_snr_gamma: -1}"])
    with pytest.raises(ConfigError, match="objective.args.*unknown loss target 'score'"):
        load_config([], ["objective.args={target: score}"])
    # EDM's objective has its own options, and not min-SNR's
    load_config([], ["objective.process=ve", "objective.weighting=edm", "objective.args={sigma_data: 0.5}"])
    with pytest.raises(ConfigError, match="objective.args.*sigma_data, p_mean, p_std"):
        load_config([], ["objective.weighting=edm", "objective.args={min_snr_gamma: 5}"])
