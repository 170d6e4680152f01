"""Datasets and loaders: the embedded MNIST split, seeded data order, ImageFolder conversion."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from train_helpers import make_image_folder

from vitpss.config import TrainConfig
from vitpss.data import BatchRandomResizedCrop, EpochSampler, build_datasets, build_loader, seeded_uniforms
from vitpss.errors import UsageError


def test_mnist5k_is_a_fixed_4000_1000_split_independent_of_seed():
    train_a, val_a, classes, chans, size = build_datasets(TrainConfig(seed=0, augment="none"))
    train_b, _, _, _, _ = build_datasets(TrainConfig(seed=5, augment="none"))
    assert (len(train_a), len(val_a), classes, chans, size) == (4000, 1000, 10, 1, 28)
    assert np.array_equal(train_a.source.images, train_b.source.images)
    train_rows = {img.tobytes() for img in train_a.source.images}
    assert not any(img.tobytes() in train_rows for img in val_a.source.images)
    image, label = val_a[0]
    assert image.shape == (1, 28, 28) and 0 <= label < 10


def test_epoch_order_is_a_function_of_seed_and_epoch():
    a, b = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    a.set_epoch(2), b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert [i for i, _ in a] != [i for i, _ in b]
    assert sorted(i for i, _ in a) == list(range(50))


def test_skipping_resumes_the_same_order_mid_epoch():
    full, resumed = EpochSampler(40, seed=1), EpochSampler(40, seed=1)
    full.set_epoch(1)
    resumed.set_epoch(1, skip=16)
    assert list(resumed) == list(full)[16:]
    assert len(resumed) == 24


def test_ranks_get_disjoint_padded_shards_of_equal_size():
    shards = []
    for rank in range(3):
        s = EpochSampler(10, seed=0, rank=rank, world_size=3)
        s.set_epoch(4)
        shards.append([i for i, _ in s])
    assert [len(s) for s in shards] == [4, 4, 4]
    assert set().union(*shards) == set(range(10))


def test_augmentation_is_a_function_of_the_sample_seed():
    train_ds, *_ = build_datasets(TrainConfig(augment="light"))
    torch.manual_seed(0)
    first = train_ds[(7, 123)][0]
    torch.manual_seed(1)
    assert torch.equal(first, train_ds[(7, 123)][0])
    assert not torch.equal(first, train_ds[(7, 124)][0])


def test_batched_light_augmentation_of_a_key_does_not_depend_on_its_batch():
    train_ds, *_ = build_datasets(TrainConfig(augment="light"))
    keys = [(i, 1000 + i) for i in range(6)]
    batch = train_ds.__getitems__(keys)
    alone = [train_ds[key] for key in reversed(keys)][::-1]
    for (img, label), (img_alone, label_alone) in zip(batch, alone):
        assert torch.equal(img, img_alone) and label == label_alone
    unaugmented = train_ds[3][0]  # a key without seed: the cached image itself
    assert img.shape == unaugmented.shape == (1, 28, 28)
    assert not torch.equal(batch[3][0], unaugmented)
    loader = build_loader(train_ds, TrainConfig(), True)
    loader.sampler.set_epoch(0)
    x, y = next(iter(loader))
    assert x.shape == (32, 1, 28, 28) and torch.isfinite(x).all()


def test_batch_crop_at_full_scale_is_the_identity_or_its_mirror():
    images = torch.randn(4, 3, 6, 10)
    same = BatchRandomResizedCrop(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)(images, [1, 2, 3, 4])
    mirrored = BatchRandomResizedCrop(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0)(images, [1, 2, 3, 4])
    torch.testing.assert_close(same, images)
    torch.testing.assert_close(mirrored, images.flip(-1))


def test_batch_crop_zooms_into_a_region_of_the_drawn_area():
    # a horizontal ramp: a crop of width w maps the ramp's slope to w times it
    ramp = torch.linspace(-1, 1, 64).expand(1, 1, 64, 64).repeat(500, 1, 1, 1)
    crop = BatchRandomResizedCrop(scale=(0.5, 0.5), ratio=(1.0, 1.0))
    out = crop(ramp, list(range(500)))
    slope = (out[:, 0, 32, 40] - out[:, 0, 32, 20]) / (ramp[0, 0, 32, 40] - ramp[0, 0, 32, 20])
    torch.testing.assert_close(slope, torch.full_like(slope, 0.5 ** 0.5), atol=1e-4, rtol=0)
    assert out.amin() >= -1 - 1e-6 and out.amax() <= 1 + 1e-6
    centres = out[:, 0, 32, 31:33].mean(1)  # crop centres spread over the allowed range
    assert centres.amin() < -0.2 and centres.amax() > 0.2


def test_seeded_uniforms_are_pure_functions_of_each_seed():
    u = seeded_uniforms([5, 6, 7], 4)
    assert u.shape == (3, 4) and ((u >= 0) & (u < 1)).all()
    np.testing.assert_array_equal(seeded_uniforms([7], 4)[0], u[2])
    many = seeded_uniforms(list(range(20000)), 1)
    assert abs(many.mean() - 0.5) < 0.01


def test_image_folder_converts_every_mode_to_the_model_channels(tmp_path):
    root = make_image_folder(tmp_path / "imgs")
    cfg = TrainConfig(data=str(root), img_size=16, in_chans=3)
    train_ds, val_ds, classes, chans, size = build_datasets(cfg)
    assert (len(train_ds), len(val_ds), classes, chans, size) == (16, 4, 2, 3, 16)
    loader = build_loader(train_ds, cfg, train=True, batch_size=16)
    images, labels = next(iter(loader))
    assert images.shape == (16, 3, 16, 16) and sorted(labels.tolist()) == [0] * 8 + [1] * 8
    gray = build_datasets(dataclasses.replace(cfg, in_chans=1))[1]
    assert gray[0][0].shape == (1, 16, 16)


def test_synthetic_data_has_the_requested_size_shape_and_classes():
    cfg = TrainConfig(data="synthetic", synthetic_size=40, num_classes=4, img_size=16, in_chans=3)
    train_ds, val_ds, classes, chans, size = build_datasets(cfg)
    assert (len(train_ds), len(val_ds), classes) == (40, 10, 4)
    assert train_ds[0][0].shape == (3, 16, 16)
    assert not torch.equal(train_ds[0][0], val_ds[0][0])


@pytest.mark.parametrize("mutate, message", [
    (lambda root: None, "no such directory"),
    (lambda root: (root / "train").mkdir(parents=True), "train has no class subdirectories"),
    (lambda root: make_image_folder(root, val_per_class=0) and shutil.rmtree(root / "val"), "missing val/"),
])
def test_missing_data_directories_are_usage_errors(tmp_path, mutate, message):
    root = tmp_path / "data"
    mutate(root)
    with pytest.raises(UsageError, match=message):
        build_datasets(TrainConfig(data=str(root)))


@pytest.mark.parametrize("cores,device,expected", [(2, "cpu", 0), (1, "cpu", 0), (4, "cpu", 3), (16, "cpu", 8),
                                                   (2, "cuda", 1)])
def test_default_workers_leave_small_cpus_to_the_model(monkeypatch, tmp_path, cores, device, expected):
    from vitpss import data

    monkeypatch.setattr(data.loader.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    cfg = TrainConfig(data=str(tmp_path), device=device)
    assert data.default_workers(cfg) == expected
    assert data.default_workers(dataclasses.replace(cfg, data="mnist5k")) == 0
