"""webdataset shards on real tar files: reading, URL forms, damage detection and rank/worker sharding."""

import io
import json
import logging
import pickle
import tarfile
from collections import Counter

import pytest
import torch

from diffaug.data import (
    ClassMap,
    CorruptDataError,
    CorruptionLog,
    DiffusionDataModule,
    ImageTransform,
    ShardDataset,
    read_manifest,
)
from tests.data_helpers import iterate_until_error, read_ids, write_id_shards

TRANSFORM = ImageTransform(resolution=8, channels=1)


def _read(path, on_corrupt="fail", **kwargs):
    log = CorruptionLog(on_corrupt)
    dataset = ShardDataset(path=path, transform=TRANSFORM, corruption=log, **kwargs)
    pairs = list(dataset)
    ids = read_ids(torch.stack([x for x, _ in pairs])) if pairs else []
    return ids, [y for _, y in pairs], log


def test_written_shards_read_back_with_labels_and_class_map(tmp_path):
    counts = write_id_shards(tmp_path, 25, maxcount=10)
    assert counts == {"shard-000000.tar": 10, "shard-000001.tar": 10, "shard-000002.tar": 5}
    assert read_manifest(tmp_path / "shards.json") == counts
    assert ClassMap.from_json(tmp_path / "classes.json").names == ("class0", "class1", "class2")
    ids, labels, log = _read(tmp_path)
    assert ids == list(range(25))  # no shuffling asked for: written order
    assert labels == [i % 3 for i in ids]
    assert log.count == 0
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        assert tar.getnames()[:2] == ["00000000.cls", "00000000.png"]


def test_brace_pattern_and_pipe_urls(tmp_path):
    write_id_shards(tmp_path, 30, maxcount=10)
    ids, _, _ = _read(str(tmp_path / "shard-{000001..000002}.tar"))
    assert ids == list(range(10, 30))
    ids, labels, _ = _read(f"pipe:cat {tmp_path}/shard-{{000000..000002}}.tar")
    assert ids == list(range(30)) and labels == [i % 3 for i in range(30)]
    ids, _, _ = _read(f"{tmp_path}/shard-000002.tar::{tmp_path}/shard-000000.tar")
    assert ids == list(range(20, 30)) + list(range(10))


def test_missing_classes_json_asks_for_class_names(tmp_path):
    write_id_shards(tmp_path, 5, maxcount=5)
    (tmp_path / "classes.json").unlink()
    with pytest.raises(FileNotFoundError, match="pass class_names"):
        _read(tmp_path)
    _, labels, _ = _read(tmp_path, class_names=["x", "y", "z"])
    assert labels == [0, 1, 2, 0, 1]


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_shard_skip_warns_counts_and_keeps_the_rest(tmp_path, caplog):
    write_id_shards(tmp_path, 30, maxcount=10)
    broken = tmp_path / "shard-000001.tar"
    _truncate(broken)
    with caplog.at_level(logging.WARNING, logger="diffaug.data.corrupt"):
        ids, _, log = _read(tmp_path, on_corrupt="skip")
    assert str(broken) in caplog.text
    assert log.skipped == [str(broken)] and log.count == 1
    assert set(range(10)) | set(range(20, 30)) <= set(ids)  # intact shards complete
    assert 20 <= len(ids) < 30 and len(ids) == len(set(ids))


def test_truncated_shard_fail_names_it_also_through_pipe(tmp_path):
    write_id_shards(tmp_path, 30, maxcount=10)
    broken = tmp_path / "shard-000001.tar"
    _truncate(broken)
    with pytest.raises(CorruptDataError, match=str(broken)):
        _read(tmp_path, on_corrupt="fail")
    with pytest.raises(CorruptDataError, match=f"pipe:cat {broken}"):
        _read(f"pipe:cat {tmp_path}/shard-{{000000..000002}}.tar", on_corrupt="fail")


def test_truncated_shard_in_dataloader_worker_fails_with_path(tmp_path):
    write_id_shards(tmp_path, 30, maxcount=10)
    broken = tmp_path / "shard-000002.tar"
    _truncate(broken)
    dm = DiffusionDataModule(source="shards", path=tmp_path, resolution=8, batch_size=4, num_workers=2,
                             on_corrupt="fail", val_fraction=0.0)
    with pytest.raises(CorruptDataError, match=str(broken)):
        iterate_until_error(dm.train_dataloader())


def _damage_header(path, member_index):
    """Overwrite the checksum of one member header in the middle of the tar file."""
    with tarfile.open(path) as tar:
        offset = tar.getmembers()[member_index].offset
    data = bytearray(path.read_bytes())
    data[offset + 148 : offset + 156] = b"garbage!"
    path.write_bytes(bytes(data))


def test_damaged_header_is_caught_only_by_the_manifest(tmp_path):
    write_id_shards(tmp_path, 30, maxcount=10)
    damaged = tmp_path / "shard-000001.tar"
    _damage_header(damaged, member_index=8)  # first member of the shard's 5th sample
    with pytest.raises(CorruptDataError, match=rf"{damaged}: yielded 4 samples but the manifest says 10"):
        _read(tmp_path, on_corrupt="fail")
    ids, _, log = _read(tmp_path, on_corrupt="skip")
    assert len(ids) == 24 and log.skipped == [str(damaged)]
    # Without the manifest the same loss is silent: the tar reader just stops at the bad header.
    (tmp_path / "shards.json").unlink()
    ids, _, log = _read(tmp_path, on_corrupt="fail")
    assert len(ids) == 24 and log.count == 0


def test_stale_manifest_is_rejected(tmp_path):
    write_id_shards(tmp_path, 10, maxcount=5)
    (tmp_path / "shards.json").write_text(json.dumps({"shard-000000.tar": 5}))
    with pytest.raises(ValueError, match="does not list 1 of the shards"):
        _read(tmp_path)


def test_corrupt_image_and_bad_label_inside_a_shard(tmp_path):
    write_id_shards(tmp_path, 4, maxcount=4)
    shard = tmp_path / "shard-000000.tar"
    members = []
    with tarfile.open(shard) as tar:
        for info in tar.getmembers():
            data = tar.extractfile(info).read()
            if info.name == "00000001.png":
                data = b"not a png at all"
            if info.name == "00000002.cls":
                data = b"7"  # only 3 classes
            if info.name == "00000003.cls":
                continue  # a sample without a label
            members.append((info.name, data))
    members.append(("00000003.pyd", pickle.dumps(None)))  # never unpickled: not a decoded member
    with tarfile.open(shard, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ids, _, log = _read(tmp_path, on_corrupt="skip")
    assert ids == [0]
    assert log.skipped == [f"{shard} (sample 0000000{i})" for i in (1, 2, 3)]
    with pytest.raises(CorruptDataError, match=r"sample 00000001\): cannot decode its .png member"):
        _read(tmp_path, on_corrupt="fail")


def _epoch_ids(tmp_path, world_size, num_workers, batch_size, epochs=1, monkeypatch=None):
    """Sample ids per rank and epoch, each rank reading through its own DataLoader with real workers.

    Ranks are given explicitly, or with ``monkeypatch`` through RANK / WORLD_SIZE, the environment
    that DDP launchers set and webdataset's split_by_node reads when no override is given.
    """
    seen = {}
    for rank in range(world_size):
        if monkeypatch is None:
            override = {"rank": rank, "world_size": world_size}
        else:
            override = {}
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", str(world_size))
        dm = DiffusionDataModule(
            source="shards", path=tmp_path, resolution=8, batch_size=batch_size, num_workers=num_workers,
            shuffle_buffer=8, seed=3, val_fraction=0.0, **override,
        )
        loader = dm.train_dataloader()
        for epoch in range(epochs):
            batches = list(loader)
            assert all(x.shape == (batch_size, 1, 8, 8) and y.dtype == torch.int64 for x, y in batches)
            seen[rank, epoch] = [i for x, _ in batches for i in read_ids(x)]
    return seen


@pytest.mark.parametrize("rank_from", ["override", "environment"])
def test_two_ranks_two_workers_see_every_sample_exactly_once(tmp_path, monkeypatch, rank_from):
    write_id_shards(tmp_path, 48, maxcount=6)  # 8 shards: 2 per reader
    env = monkeypatch if rank_from == "environment" else None
    seen = _epoch_ids(tmp_path, world_size=2, num_workers=2, batch_size=3, epochs=2, monkeypatch=env)
    for epoch in range(2):
        ids = seen[0, epoch] + seen[1, epoch]
        assert Counter(ids) == Counter(range(48))  # every sample once, none twice
        assert len(seen[0, epoch]) == len(seen[1, epoch]) == 24
        assert not set(seen[0, epoch]) & set(seen[1, epoch])
    assert seen[0, 0] != seen[0, 1]  # reshuffled in the second epoch
    assert sorted(seen[0, 0]) == sorted(seen[0, 1])  # but the rank keeps its shards


def test_uneven_shards_give_equal_batch_counts_without_repeats(tmp_path):
    write_id_shards(tmp_path, 40, maxcount=6)  # 6 full shards and one of 4
    seen = _epoch_ids(tmp_path, world_size=2, num_workers=2, batch_size=2)
    assert len(seen[0, 0]) == len(seen[1, 0])  # equal batch counts: no rank waits on the other at the end
    ids = seen[0, 0] + seen[1, 0]
    assert len(ids) == len(set(ids))  # trimming drops samples, never repeats them
    # The smallest reader holds shard 3 alone (6 samples): every reader is trimmed to 6, 4 readers.
    assert len(ids) == 24


def test_fewer_shards_than_readers_is_a_clear_error(tmp_path):
    write_id_shards(tmp_path, 12, maxcount=6)  # 2 shards for 2 ranks x 2 workers
    dm = DiffusionDataModule(source="shards", path=tmp_path, resolution=8, batch_size=2, num_workers=2,
                             rank=0, world_size=2, val_fraction=0.0)
    with pytest.raises(ValueError, match="2 shards cannot give each of 2 ranks x 2 workers a full batch"):
        iterate_until_error(dm.train_dataloader())
