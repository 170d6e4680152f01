"""``--decode gpu``: the loader carries undecoded JPEGs and the device decodes, crops and flips them. On the CPU
device the same pipeline gives the CPU path's images within JPEG decoder tolerance, batch for batch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import folder_to_shards, make_image_folder, tiny_run

from vitpss.config import TrainConfig, validate
from vitpss.data import build_datasets, build_loader
from vitpss.errors import UsageError

STD = 0.229 * 255  # the largest ImageNet std, in uint8 levels: a normalised difference times this bounds levels


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """An ImageFolder of JPEGs of several sizes (one grayscale JPEG, one PNG) in two classes."""
    root = tmp_path_factory.mktemp("jpegs") / "imgs"
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 40 * 48).reshape(40, 48)
    for split, count in (("train", 6), ("val", 3)):
        for label in range(2):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.stack([ramp, ramp[:, ::-1], rng.random((40, 48)) * 50 + 100 * label], -1).astype(np.uint8)
                img = Image.fromarray(pixels).resize((48 + 8 * i, 40 + 4 * i))
                if i == 1:
                    img.convert("L").save(folder / f"{i}.jpg", quality=90)
                elif i == 2:
                    img.save(folder / f"{i}.png")
                else:
                    img.save(folder / f"{i}.jpg", quality=90)
    return root


def config(data, **kw) -> TrainConfig:
    return TrainConfig(data=str(data), img_size=32, in_chans=3, in_memory="off", workers=0, quiet=True, **kw)


def batches(cfg: TrainConfig, train: bool, epoch: int = 1, skip: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    ds = build_datasets(cfg)[0 if train else 1]
    loader = build_loader(ds, cfg, train, batch_size=4, device=torch.device("cpu"))
    loader.sampler.set_epoch(epoch, skip)
    return list(loader)


@pytest.mark.parametrize("augment", ["light", "none"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "val"])
def test_device_decoding_gives_the_cpu_paths_images_within_jpeg_tolerance(jpegs, augment, train):
    cfg = config(jpegs, augment=augment)
    cpu, device = batches(cfg, train), batches(dataclasses.replace(cfg, decode="gpu"), train)
    assert len(cpu) == len(device) > 0
    for (x_cpu, y_cpu), (x_dev, y_dev) in zip(cpu, device):
        assert torch.equal(y_cpu, y_dev) and x_cpu.shape == x_dev.shape
        levels = (x_cpu - x_dev).abs() * STD
        assert levels.max() <= 2.5 and levels.mean() < 0.25


def test_device_decoding_from_shards_resumes_mid_epoch_with_the_same_crops(jpegs, tmp_path):
    shards = folder_to_shards(jpegs, tmp_path / "shards")
    cfg = config(shards, decode="gpu")
    full, resumed = batches(cfg, True, epoch=2), batches(cfg, True, epoch=2, skip=4)
    assert torch.equal(full[1][0], resumed[0][0])
    reference = batches(config(jpegs), True, epoch=2)
    assert ((full[0][0] - reference[0][0]).abs() * STD).max() <= 2.5


def test_device_decoding_in_loader_workers(jpegs):
    cfg = config(jpegs, decode="gpu")
    alone, workers = batches(cfg, True), batches(dataclasses.replace(cfg, workers=2), True)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(alone, workers))


def test_decode_gpu_refuses_augmentations_it_cannot_repeat():
    with pytest.raises(UsageError, match="--decode gpu does the random-resized crop and flip on the device, not "
                                         "--augment randaug: use --augment light or none"):
        validate(TrainConfig(data="x", decode="gpu", augment="randaug"))


def test_decode_gpu_refuses_data_held_in_memory(tmp_path):
    cfg = dataclasses.replace(config(make_image_folder(tmp_path / "d"), decode="gpu"), in_memory="on")
    with pytest.raises(UsageError, match="--decode gpu decodes image files read from disk.*--in-memory off"):
        batches(cfg, True)


def test_decode_gpu_keeps_an_image_folder_on_disk_under_in_memory_auto(jpegs):
    train, *_ = build_datasets(dataclasses.replace(config(jpegs, decode="gpu"), in_memory="auto"))
    assert hasattr(train, "encoded_view")


def test_training_run_decodes_on_the_device(jpegs, tmp_path):
    import json

    from vitpss.cli import main

    assert main(tiny_run(tmp_path / "run", "--decode", "gpu", data=str(jpegs), epochs=1)) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs"] == 1
