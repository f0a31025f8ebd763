"""Export building blocks without a model: seeds, names, quotas, parts, record logs, atomic files, tars."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffaug.augset import seeds as seeds_module
from diffaug.augset.files import atomic_write_bytes, is_temp_name, remove_temp_files, temp_path
from diffaug.augset.names import sanitize_class_names
from diffaug.augset.plan import build_items, items_of_part
from diffaug.augset.records import RecordLog, log_path, read_records
from diffaug.augset.seeds import derive_seed
from diffaug.augset.shards import write_tar
from diffaug.config import ConfigError
from diffaug.sampling.quotas import compute_quotas
from diffaug.sampling.ranks import resolve_partition
from diffaug.sampling.settings import resolve_guidance

# ---------------------------------------------------------------- seeds


def test_seeds_are_distinct_in_range_and_independent_of_the_process():
    seeds = {(b, c, i): derive_seed(b, c, i) for b in range(3) for c in range(20) for i in range(200)}
    assert len(set(seeds.values())) == len(seeds)  # no collisions over 12,000 (seed, class, index) triples
    assert all(0 <= s < 2**63 for s in seeds.values())
    # Python's hash() is salted per process; derive_seed must not be. The module is loaded by path, so the
    # child process stays light.
    code = (
        "import importlib.util as u, sys; s = u.spec_from_file_location('seeds', sys.argv[1]); "
        "m = u.module_from_spec(s); s.loader.exec_module(m); "
        "print(m.derive_seed(7, 3, 11), m.derive_seed(0, 0, 0))"
    )
    outputs = [
        subprocess.run(
            [sys.executable, "-c", code, seeds_module.__file__],
            env={**os.environ, "PYTHONHASHSEED": salt},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for salt in ("1", "2")
    ]
    assert outputs[0] == outputs[1] == [str(derive_seed(7, 3, 11)), str(derive_seed(0, 0, 0))]


def test_seed_rejects_negative_and_non_int():
    with pytest.raises(ValueError):
        derive_seed(0, -1, 0)
    with pytest.raises(TypeError):
        derive_seed(0, 1.0, 0)  # type: ignore[arg-type]


# ---------------------------------------------------------------- class names


HOSTILE = [
    "../../etc",
    "/etc/passwd",
    "..",
    ".",
    "",
    "a/b",
    "a_b",
    "a\\b",
    "nul\x00byte",
    "CON",
    "con.txt",
    "LPT1",
    "Cat",
    "cat",
    " spaced out ",
    "ünïcödé",
    "x" * 300,
]


def test_sanitised_names_stay_inside_the_folder_and_are_distinct(tmp_path):
    safe = sanitize_class_names(HOSTILE)
    assert len(safe) == len(HOSTILE)
    assert len({s.casefold() for s in safe}) == len(safe)  # distinct even on case-insensitive file systems
    root = (tmp_path / "images").resolve()
    for name in safe:
        assert (
            name and "/" not in name and "\\" not in name and "\x00" not in name and not name.startswith(".")
        )
        assert len(name.encode()) < 255
        assert name.split(".")[0].upper() not in {"CON", "PRN", "AUX", "NUL", "LPT1"}
        target = (root / name / "000000.png").resolve()
        assert target.parent.parent == root
        target.parent.mkdir(parents=True)  # creatable on this file system
    assert safe[HOSTILE.index("ünïcödé")] == "ünïcödé"  # readable names survive


def test_ordinary_names_are_unchanged():
    names = ["airplane", "t-shirt_top", "class.1", "0"]
    assert sanitize_class_names(names) == tuple(names)


# ---------------------------------------------------------------- quotas


def test_quota_modes():
    names = ["a", "b", "c"]
    counts = {"a": 10, "b": 3, "c": 5}
    assert compute_quotas(names, per_class=4) == {"a": 4, "b": 4, "c": 4}
    assert compute_quotas(names, multiple=0.5, real_counts=counts) == {
        "a": 5,
        "b": 2,
        "c": 3,
    }  # half rounds up
    assert compute_quotas(names, multiple=2.0, real_counts=counts) == {"a": 20, "b": 6, "c": 10}
    assert compute_quotas(names, balance=True, real_counts=counts) == {"a": 0, "b": 7, "c": 5}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "choose exactly one"),
        ({"per_class": 3, "balance": True}, "export.per_class, export.balance"),
        ({"multiple": 1.0}, "needs the real class counts"),
        ({"balance": True, "real_counts": {"a": 1}}, "lack the classes ['b']"),
        ({"per_class": -1}, "must be >= 0"),
    ],
)
def test_quota_errors_name_the_problem(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        compute_quotas(["a", "b"], **kwargs)


# ---------------------------------------------------------------- work items and parts


def test_parts_are_disjoint_and_cover_every_item():
    items = build_items([7, 0, 12, 3], base_seed=5, guidance=[1.0, 1.0, 2.0, 1.0])
    assert [(it.class_index, it.index) for it in items] == sorted((it.class_index, it.index) for it in items)
    for world in (1, 2, 3, 5):
        parts = [items_of_part(items, r, world) for r in range(world)]
        keys = [it.key for part in parts for it in part]
        assert sorted(keys) == sorted(it.key for it in items) and len(set(keys)) == len(items)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced
    assert all(it.seed == derive_seed(5, it.class_index, it.index) for it in items)
    assert {it.guidance for it in items if it.class_index == 2} == {2.0}
    assert all("." not in it.key for it in items)  # webdataset splits keys at the first dot


def test_sources_are_used_round_robin_and_missing_sources_fail():
    items = build_items([5], base_seed=0, guidance=[1.0], sources=[["x.png", "y.png"]])
    assert [it.source for it in items] == ["x.png", "y.png", "x.png", "y.png", "x.png"]
    with pytest.raises(ConfigError, match="no image of it"):
        build_items([1, 2], base_seed=0, guidance=[1.0, 1.0], sources=[["x.png"], []])


def test_class_guidance_overrides_and_unknown_classes():
    assert resolve_guidance(["cat", "dog"], 1.5, {"dog": 3.0}) == [1.5, 3.0]
    with pytest.raises(ConfigError, match="unknown classes.*Did you mean 'dog'"):
        resolve_guidance(["cat", "dog"], 1.0, {"dgo": 2.0})


# ---------------------------------------------------------------- which part this process makes


def test_partition_sources():
    assert resolve_partition(env={}).world_size == 1
    p = resolve_partition(2, 5, env={"RANK": "0", "WORLD_SIZE": "2"})
    assert (p.rank, p.world_size, p.uses_torch_distributed) == (2, 5, False)  # explicit wins
    p = resolve_partition(
        env={
            "SLURM_ARRAY_TASK_ID": "13",
            "SLURM_ARRAY_TASK_COUNT": "4",
            "SLURM_ARRAY_TASK_MIN": "10",
            "SLURM_ARRAY_TASK_STEP": "1",
        }
    )
    assert (p.rank, p.world_size) == (3, 4)
    p = resolve_partition(env={"RANK": "1", "WORLD_SIZE": "2"})
    assert (p.rank, p.world_size, p.uses_torch_distributed) == (1, 2, True)
    p = resolve_partition(
        env={"RANK": "1", "WORLD_SIZE": "2", "SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3"}
    )
    assert (p.rank, p.world_size) == (5, 6)  # array task 2 of 3, process 1 of 2


@pytest.mark.parametrize(
    "args, env, message",
    [
        ((1, None), {}, "both --rank and --world-size"),
        ((3, 3), {}, r"must be in \[0, --world-size\)"),
        (
            (None, None),
            {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_STEP": "2"},
            "not part of a contiguous array",
        ),
    ],
)
def test_partition_errors(args, env, message):
    with pytest.raises(ConfigError, match=message):
        resolve_partition(*args, env=env)


# ---------------------------------------------------------------- durable records


def test_record_log_survives_a_torn_last_line(tmp_path):
    path = log_path(tmp_path, "r00000")
    with RecordLog(path) as log:
        log.append([{"class_index": 0, "index": i, "kept": True} for i in range(3)])
    with open(path, "ab") as handle:  # a kill in the middle of a write
        handle.write(b'{"class_index": 0, "index": 3, "ke')
    assert sorted(read_records(tmp_path)) == [(0, 0), (0, 1), (0, 2)]  # readers skip the torn line
    with RecordLog(path) as log:  # the owner cuts it off before appending
        log.append([{"class_index": 0, "index": 3, "kept": False}])
    lines = path.read_bytes().splitlines()
    assert len(lines) == 4 and all(json.loads(line) for line in lines)
    assert read_records(tmp_path)[(0, 3)]["kept"] is False


# ---------------------------------------------------------------- atomic files


def test_atomic_write_leaves_no_temp_file_and_cleanup_is_per_part(tmp_path):
    target = atomic_write_bytes(tmp_path / "sub" / "a.png", b"data", tag="r00001")
    assert target.read_bytes() == b"data" and os.listdir(tmp_path / "sub") == ["a.png"]
    stale0 = temp_path(tmp_path / "sub" / "b.png", "r00000")
    stale1 = temp_path(tmp_path / "sub" / "c.png", "r00001")
    stale0.write_bytes(b"half")
    stale1.write_bytes(b"half")
    assert is_temp_name(stale0.name) and not is_temp_name("a.png")
    assert remove_temp_files(tmp_path, "r00001") == 1  # only part 1's leftovers
    assert stale0.exists() and not stale1.exists()
    assert remove_temp_files(tmp_path) == 1 and not stale0.exists()


def test_tar_shards_are_byte_reproducible(tmp_path):
    members = [{"__key__": f"k{i}", "png": bytes([i]) * (i + 1)} for i in range(5)]
    write_tar(tmp_path / "a.tar", members, tag="t")
    os.utime(tmp_path, (0, 12345))
    write_tar(tmp_path / "b.tar", members, tag="t")
    a, b = (tmp_path / "a.tar").read_bytes(), (tmp_path / "b.tar").read_bytes()
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["a.tar", "b.tar"]
