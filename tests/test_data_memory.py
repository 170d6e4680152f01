"""In-memory data: CIFAR-10 through torchvision, ImageFolders held as uint8, batched tensor augmentation."""

from __future__ import annotations

import pickle
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms
from torchvision.datasets import CIFAR10
from train_helpers import make_image_folder

from vitpss.config import TrainConfig
from vitpss.data import BatchPadCrop, InMemoryDataset, build_datasets, build_loader, per_class_subset
from vitpss.errors import UsageError


def write_fake_cifar10(root, per_batch: int = 20, test: int = 30) -> None:
    """torchvision's CIFAR-10 file layout with a few random images (class = index % 10)."""
    folder = root / "cifar10" / CIFAR10.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [name for name, _ in CIFAR10.train_list] + [CIFAR10.test_list[0][0]]
    for name in names:
        count = test if name == "test_batch" else per_batch
        batch = {"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8), "labels": [i % 10 for i in range(count)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / CIFAR10.meta["filename"]).write_bytes(pickle.dumps({"label_names": ["c"] * 10}))


@pytest.fixture
def fake_cifar10(tmp_path, monkeypatch):
    write_fake_cifar10(tmp_path)
    # our files have no official md5
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    return tmp_path / "cifar10"


def test_per_class_subset_is_fixed_nested_and_balanced():
    labels = np.repeat(np.arange(4), 50)
    small, large = per_class_subset(labels, 5), per_class_subset(labels, 20)
    assert np.bincount(labels[small]).tolist() == [5] * 4
    assert set(small) <= set(large)
    assert np.array_equal(per_class_subset(labels, 5), small)
    assert len(per_class_subset(labels, None)) == 200


def test_cifar10_loads_in_memory_with_its_classes_and_subsets(fake_cifar10):
    cfg = TrainConfig(data="cifar10", data_root=str(fake_cifar10), train_subset=3, val_subset=2, augment="pad-crop")
    train, val, classes, chans, size = build_datasets(cfg)
    assert isinstance(train, InMemoryDataset) and (classes, chans, size) == (10, 3, 32)
    assert (len(train), len(val)) == (30, 20)
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 32, 32)
    image, label = train[(4, 99)]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and 0 <= label < 10


def test_cifar10_offline_without_files_is_one_line_naming_where_to_put_them(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(CIFAR10, "download", offline)
    with pytest.raises(UsageError) as err:
        build_datasets(TrainConfig(data="cifar10", data_root=str(tmp_path / "c10")))
    message = str(err.value)
    assert "\n" not in message and "cifar-10-python.tar.gz" in message and str(tmp_path / "c10") in message


def test_image_folder_of_one_size_is_decoded_once_into_memory(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=6, size=16)
    common = {"data": str(root), "img_size": 16, "augment": "none", "quiet": True}
    memory, val_mem, *_ = build_datasets(TrainConfig(**common))
    disk, val_disk, *_ = build_datasets(TrainConfig(**common, in_memory="off"))
    assert isinstance(memory, InMemoryDataset) and not isinstance(disk, InMemoryDataset)
    normalise = transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
    for i in range(len(val_mem)):  # the whole image (no centre crop), normalised as the Pillow path
        image, label = val_disk.source[i]
        assert torch.allclose(val_mem[i][0], normalise(image), atol=1e-5) and val_mem[i][1] == label


def test_image_folder_of_mixed_sizes_stays_on_disk_unless_forced(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=2, size=16)
    Image.new("RGB", (24, 24)).save(root / "train" / "cat" / "big.png")
    train, *_ = build_datasets(TrainConfig(data=str(root), img_size=16, quiet=True))
    assert not isinstance(train, InMemoryDataset)
    with pytest.raises(UsageError, match="--in-memory on needs images of one size"):
        build_datasets(TrainConfig(data=str(root), img_size=16, in_memory="on"))


def test_pad_crop_is_a_shifted_window_of_the_padded_image_per_seed():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    crop = BatchPadCrop(pad=2, hflip=0.0)
    out = crop(images, [11, 12])
    assert torch.equal(out, crop(images, [11, 12])) and out.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    windows = [padded[0, :, r:r + 8, c:c + 8] for r in range(5) for c in range(5)]
    assert any(torch.equal(out[0], w) for w in windows)
    assert torch.equal(BatchPadCrop(pad=0, hflip=1.0)(images, [1, 2]), images.flip(-1))


def test_in_memory_batches_depend_only_on_seed_and_epoch(fake_cifar10):
    cfg = TrainConfig(data="cifar10", data_root=str(fake_cifar10), augment="randaug", batch_size=8, seed=3)
    train, *_ = build_datasets(cfg)
    batches = []
    for _ in range(2):
        loader = build_loader(train, cfg, train=True)
        loader.sampler.set_epoch(1)
        batches.append(next(iter(loader))[0])
    assert torch.equal(batches[0], batches[1])


def test_image_folder_over_the_memory_limit_stays_on_disk(tmp_path, monkeypatch):
    import vitpss.data.build

    root = make_image_folder(tmp_path / "d", per_class=2, size=16)
    monkeypatch.setattr(vitpss.data.build, "IN_MEMORY_LIMIT_BYTES", 100)  # 10 images of 16x16x3 are larger
    train, *_ = build_datasets(TrainConfig(data=str(root), img_size=16, quiet=True))
    assert not isinstance(train, InMemoryDataset)
    forced, *_ = build_datasets(TrainConfig(data=str(root), img_size=16, quiet=True, in_memory="on"))
    assert isinstance(forced, InMemoryDataset)
