"""WebDataset shards and Hugging Face datasets give the ImageFolder's images, labels and order; bad input is one line."""

from __future__ import annotations

import dataclasses
import io
import tarfile

import numpy as np
import pytest
import torch
from train_helpers import folder_to_hf, folder_to_shards, make_image_folder

from vitpss.config import TrainConfig
from vitpss.data import build_datasets, build_loader, data_kind
from vitpss.errors import UsageError

pytest.importorskip("webdataset")
pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "imgs", per_class=6, val_per_class=3)


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory):
    return folder_to_shards(folder, tmp_path_factory.mktemp("wds") / "shards")


@pytest.fixture(scope="module")
def saved_hf(folder, tmp_path_factory):
    return folder_to_hf(folder, tmp_path_factory.mktemp("hf") / "saved")


def config(data, **kw) -> TrainConfig:
    return TrainConfig(data=str(data), img_size=16, in_chans=3, in_memory="off", workers=0, quiet=True, **kw)


def first_batches(cfg: TrainConfig, epoch: int = 1, skip: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    train, *_ = build_datasets(cfg)
    loader = build_loader(train, cfg, train=True, batch_size=4)
    loader.sampler.set_epoch(epoch, skip)
    return next(iter(loader))


def test_data_kinds_are_found_by_name_and_by_marker_file(folder, shards, saved_hf):
    assert [data_kind(str(d)) for d in (folder, shards, saved_hf)] == ["folder", "wds", "hf"]
    assert data_kind(f"wds/{shards}") == "wds" and data_kind("hfds/someone/cifar10") == "hf"


@pytest.mark.parametrize("source", ["shards", "saved_hf"])
def test_new_sources_give_the_image_folders_augmented_batches(folder, source, request):
    data = request.getfixturevalue(source)
    for epoch, skip in ((0, 0), (1, 3)):
        expected = first_batches(config(folder), epoch, skip)
        got = first_batches(config(data), epoch, skip)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@pytest.mark.parametrize("source", ["shards", "saved_hf"])
def test_new_sources_keep_class_counts_and_per_class_subsets(folder, source, request):
    data = request.getfixturevalue(source)
    train, val, classes, _, _ = build_datasets(config(data, train_subset=2, val_subset=1))
    assert (len(train), len(val), classes) == (4, 2, 2)


def test_explicit_wds_patterns_select_shards(shards):
    cfg = config(f"wds/{shards}", train_split="train-{000000..000001}.tar", val_split="val-000000.tar")
    train, val, *_ = build_datasets(cfg)
    assert (len(train), len(val)) == (10, 5)


def test_counting_from_tar_headers_is_said(shards, capsys):
    build_datasets(config(shards))
    assert "no _info.json; counted 12 train and 6 val samples from the tar headers of 5 shards" in capsys.readouterr().err


def test_hf_validation_split_falls_back_to_test(folder, tmp_path):
    saved = folder_to_hf(folder, tmp_path / "hf", val_name="test")
    _, val, *_ = build_datasets(config(saved))
    assert len(val) == 6


def test_hf_columns_are_named_by_flags(folder, tmp_path):
    import datasets

    saved = folder_to_hf(folder, tmp_path / "hf")
    renamed = datasets.load_from_disk(str(saved)).rename_columns({"image": "img", "label": "fine_label"})
    renamed.save_to_disk(str(tmp_path / "renamed"))
    with pytest.raises(UsageError, match="no column 'image'.*--image-column"):
        build_datasets(config(tmp_path / "renamed"))
    train, *_ = build_datasets(config(tmp_path / "renamed", image_column="img", label_column="fine_label"))
    assert len(train) == 12


def rewrite_shard(path, change) -> None:
    """Rewrite the tar ``path`` with ``change(name, data) -> (name, data) | None`` applied to each member."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(path, "w") as tar:
        for name, data in filter(None, (change(n, d) for n, d in members)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def copy_shards(shards, tmp_path):
    import shutil

    return shutil.copytree(shards, tmp_path / "shards")


def test_missing_split_is_one_usage_line(shards, tmp_path):
    copy = copy_shards(shards, tmp_path)
    for tar in copy.glob("val-*.tar"):
        tar.unlink()
    with pytest.raises(UsageError, match=r"no val-\*\.tar shards in .*--val-split"):
        build_datasets(config(copy))


def test_missing_hf_split_is_one_usage_line(saved_hf):
    with pytest.raises(UsageError, match=r"no split 'nope' \(splits: train, validation\): pass --val-split NAME"):
        build_datasets(config(saved_hf, val_split="nope"))


def test_empty_shard_is_skipped_with_a_warning_or_an_error(shards, tmp_path, capsys):
    copy = copy_shards(shards, tmp_path)
    (copy / "train-000009.tar").write_bytes(b"")
    train, *_ = build_datasets(config(copy))
    assert len(train) == 12 and "train-000009.tar: empty: no samples; skipped" in capsys.readouterr().err
    with pytest.raises(UsageError, match="train-000009.tar: empty: no samples: fix or remove it"):
        build_datasets(config(copy, on_bad_image="error"))


def test_non_integer_cls_is_one_usage_line(shards, tmp_path):
    copy = copy_shards(shards, tmp_path)
    rewrite_shard(copy / "train-000000.tar", lambda n, d: (n, b"cat") if n.endswith(".cls") else (n, d))
    with pytest.raises(UsageError, match=r"000000.cls holds 'cat', not a class number"):
        build_datasets(config(copy))


def test_corrupt_image_member_is_skipped_and_counted(shards, tmp_path, capsys):
    copy = copy_shards(shards, tmp_path)
    rewrite_shard(copy / "train-000000.tar", lambda n, d: (n, b"not an image") if n == "000000.png" else (n, d))
    train, *_ = build_datasets(config(copy))
    train[0]
    err = capsys.readouterr().err
    assert "skipping bad image" in err and "train-000000.tar:000000.png" in err and "bad images so far: 1" in err
    with pytest.raises(UsageError, match="cannot read image .*000000.png"):
        build_datasets(config(copy, on_bad_image="error"))[0][0]


def test_sample_without_cls_is_skipped(shards, tmp_path, capsys):
    copy = copy_shards(shards, tmp_path)
    rewrite_shard(copy / "train-000000.tar", lambda n, d: None if n == "000001.cls" else (n, d))
    train, *_ = build_datasets(config(copy))
    assert len(train) == 11 and "sample '000001' has no .cls member; skipped" in capsys.readouterr().err


def test_truncated_shard_keeps_the_samples_before_the_damage(shards, tmp_path, capsys):
    copy = copy_shards(shards, tmp_path)
    tar = copy / "train-000000.tar"
    tar.write_bytes(tar.read_bytes()[:2000] + b"\x07" * 700)
    train, *_ = build_datasets(config(copy))
    assert len(train) < 12 and "train-000000.tar" in capsys.readouterr().err


def test_hf_label_column_of_strings_is_one_usage_line(folder, tmp_path):
    import datasets

    saved = folder_to_hf(folder, tmp_path / "hf")
    dd = datasets.load_from_disk(str(saved))
    dd = dd.cast_column("label", datasets.Value("int64")).map(lambda r: {"label": str(r["label"])},
                                                               features=None).cast_column("label", datasets.Value("string"))
    dd.save_to_disk(str(tmp_path / "strings"))
    with pytest.raises(UsageError, match="column 'label' of split 'train' holds string, not integer classes"):
        build_datasets(config(tmp_path / "strings"))


def test_hf_unlabelled_rows_are_one_usage_line(folder, tmp_path):
    import datasets

    saved = folder_to_hf(folder, tmp_path / "hf")
    dd = datasets.load_from_disk(str(saved)).cast_column("label", datasets.Value("int64"))
    dd["validation"] = dd["validation"].map(lambda r: {"label": -1})
    dd.save_to_disk(str(tmp_path / "unlabelled"))
    with pytest.raises(UsageError, match=r"split 'validation' has label -1 \(unlabelled rows\): pass --val-split"):
        build_datasets(config(tmp_path / "unlabelled"))


def test_hub_name_offline_is_one_usage_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    with pytest.raises(UsageError, match=r"--data hfds/nobody/no-such-set: cannot load split 'train' from the "
                                         r"Hugging Face hub .*save_to_disk and pass --data DIR"):
        build_datasets(config("hfds/nobody/no-such-set", data_root=str(tmp_path)))


def test_in_memory_on_is_refused_for_streamed_sources(shards):
    with pytest.raises(UsageError, match="--in-memory on holds an ImageFolder in memory"):
        build_datasets(dataclasses.replace(config(shards), in_memory="on"))


def test_loader_workers_read_shards_in_their_own_processes(folder, shards):
    cfg = dataclasses.replace(config(shards), workers=2)
    expected = first_batches(config(folder))
    got = first_batches(cfg)
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])


PLAN = ["plan", "--model", "vit_tiny_patch16_224", "--img-size", "32", "--patch-size", "4", "--embed-dim", "32",
        "--depth", "2", "--num-heads", "2", "--device", "cpu", "--batch-size", "2", "--epochs", "3",
        "--steps-per-epoch", "20", "--repeats", "1", "--warmup", "0"]


@pytest.mark.parametrize("source", ["shards", "saved_hf"])
def test_plan_times_the_loader_of_the_new_sources(source, request, capsys):
    import json

    from vitpss.cli import main

    data = request.getfixturevalue(source)
    assert main([*PLAN, "--json", "--data", str(data), "--workers", "0", "--data-batches", "2"]) == 0
    loader = json.loads(capsys.readouterr().out)["data"]
    assert loader["workers"] == 0 and loader["images_per_s"] > 0


def test_plan_advises_device_decoding_not_memory_for_shards(shards, monkeypatch, capsys):
    import vitpss.commands.plan
    from vitpss.cli import main

    monkeypatch.setattr(vitpss.commands.plan, "measure_loader", lambda *a, **k: vitpss.commands.plan.LoaderSpeed(1.0, 3, 2))
    assert main([*PLAN, "--data", str(shards)]) == 0
    out = capsys.readouterr().out
    assert "--decode gpu" in out and "--in-memory on" not in out


@pytest.mark.parametrize("source", ["shards", "saved_hf"])
def test_ranks_read_disjoint_shares_that_cover_the_data(source, request):
    data = request.getfixturevalue(source)
    cfg = config(data)
    train, *_ = build_datasets(cfg)
    shares = []
    for rank in range(2):
        loader = build_loader(train, cfg, train=True, rank=rank, world_size=2, batch_size=2)
        loader.sampler.set_epoch(0)
        shares.append([index for index, _ in loader.sampler])
    assert not set(shares[0]) & set(shares[1]) and sorted(shares[0] + shares[1]) == list(range(len(train)))


def test_wds_dir_reads_split_shards_from_timms_info_file(shards, tmp_path, capsys):
    import json

    copy = copy_shards(shards, tmp_path)
    splits = {split: {"name": split, "num_samples": count, "filenames": sorted(p.name for p in copy.glob(f"{split}-*.tar")),
                      "shard_lengths": []} for split, count in (("train", 12), ("val", 6))}
    splits["train"]["filenames"] = splits["train"]["filenames"][:2]  # the info file decides, not the glob
    (copy / "_info.json").write_text(json.dumps({"splits": splits}))
    train, val, *_ = build_datasets(config(f"wds/{copy}"))
    assert (len(train), len(val)) == (10, 6) and "no _info.json" not in capsys.readouterr().err
