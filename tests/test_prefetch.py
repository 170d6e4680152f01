"""Device prefetcher: uint8 batches normalised (and erased) after the loader, same images as the float path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from train_helpers import make_image_folder

from vitpss.config import TrainConfig
from vitpss.data import InMemoryDataset, TransformedDataset, build_datasets, build_loader
from vitpss.prefetch import DevicePrefetcher, erase_boxes

CPU = torch.device("cpu")


def first_batches(loader, count: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.sampler.set_epoch(1)
    batches = iter(loader)
    return [next(batches) for _ in range(count)]


def float_batches(ds, loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same keys as ``loader``'s first batches, through the dataset's own (float, normalised) path."""
    loader.sampler.set_epoch(1)
    keys = list(loader.sampler)
    out = []
    for start in (0, loader.batch_size):
        items = [ds[key] for key in keys[start:start + loader.batch_size]]
        out.append((torch.stack([img for img, _ in items]), torch.tensor([label for _, label in items])))
    return out


@pytest.mark.parametrize("augment", ["none", "pad-crop", "randaug"])  # randaug: the same erasing on both paths
def test_in_memory_uint8_batches_equal_the_float_path(tmp_path, augment):
    cfg = TrainConfig(data=str(make_image_folder(tmp_path, size=16, per_class=6)), img_size=16, batch_size=4,
                      augment=augment, in_memory="on")
    train, _, *_ = build_datasets(cfg)
    assert isinstance(train, InMemoryDataset)
    loader = build_loader(train, cfg, True, device=CPU)
    assert isinstance(loader, DevicePrefetcher) and loader.mean is not None
    raw = next(iter(loader.loader))
    assert raw[0].dtype == torch.uint8 and raw[2].dtype == torch.int64  # what workers and pinned memory carry
    for (x, y), (x_ref, y_ref) in zip(first_batches(loader), float_batches(train, loader)):
        assert x.dtype == torch.float32
        torch.testing.assert_close(x, x_ref, atol=1e-5, rtol=0)
        assert torch.equal(y, y_ref)


@pytest.mark.parametrize("augment", ["none", "light", "pad-crop"])
def test_image_folder_uint8_batches_equal_the_float_path(tmp_path, augment):
    cfg = TrainConfig(data=str(make_image_folder(tmp_path, size=20, per_class=6)), img_size=16, batch_size=4,
                      augment=augment, in_memory="off", workers=0)
    train, val, *_ = build_datasets(cfg)
    assert isinstance(train, TransformedDataset)
    loader = build_loader(train, cfg, True, device=CPU)
    assert next(iter(loader.loader))[0].dtype == torch.uint8
    for (x, _), (x_ref, _) in zip(first_batches(loader), float_batches(train, loader)):
        # the float path normalises in float32 before rounding nothing; the uint8 path starts from
        # the same 8-bit pixels, so the two agree to float rounding
        torch.testing.assert_close(x, x_ref, atol=1e-5, rtol=0)
    val_loader = build_loader(val, cfg, False, device=CPU)
    x, y = next(iter(val_loader))
    x_ref = torch.stack([val[i][0] for i in range(len(y))])
    torch.testing.assert_close(x, x_ref, atol=1e-5, rtol=0)


def test_randaug_erases_on_the_device_side_as_a_function_of_the_sample_seed(tmp_path):
    cfg = TrainConfig(data=str(make_image_folder(tmp_path, size=32, per_class=16)), img_size=32, batch_size=8,
                      augment="randaug", in_memory="on")
    train, *_ = build_datasets(cfg)
    loader = build_loader(train, cfg, True, device=CPU)
    assert loader.erase_probability == 0.25
    a, b = first_batches(loader), first_batches(loader)
    for (xa, _), (xb, _) in zip(a, b):
        assert torch.equal(xa, xb)  # the same epoch again: the same pixels
    # which images were erased: exactly those the seeds' boxes name, filled with N(0, 1) noise
    loader.sampler.set_epoch(1)
    seeds = np.array([seed for _, seed in loader.sampler][:8])
    boxes = erase_boxes(seeds, 32, 32, 0.25)
    x, _ = a[0]
    loader.prepare, prepare = (lambda batch: (batch[0], batch[1])), loader.prepare  # no normalising, no erasing
    plain = first_batches(loader, 1)[0][0].float().sub(loader.mean).div(loader.std)
    loader.prepare = prepare
    for i, (top, left, h, w) in enumerate(boxes):
        changed = (x[i] != plain[i]).any(0)
        if h == 0:
            assert not changed.any()
        else:
            assert changed[top:top + h, left:left + w].float().mean() > 0.99
            changed[top:top + h, left:left + w] = False
            assert not changed.any()


def test_erase_boxes_follow_timms_random_erasing():
    seeds = np.arange(20000)
    boxes = erase_boxes(seeds, 32, 48, 0.25)
    erased = boxes[:, 2] > 0
    assert abs(erased.mean() - 0.25) < 0.015
    top, left, h, w = boxes[erased].T
    assert (top >= 0).all() and (top + h <= 32).all() and (left >= 0).all() and (left + w <= 48).all()
    area = h * w / (32 * 48)
    assert 0.015 < area.min() and area.max() < 0.36  # 2%-33% of the image, up to rounding
    assert np.array_equal(erase_boxes(seeds[5:9], 32, 48, 0.25), boxes[5:9])  # a pure function of each seed
    assert not erase_boxes(np.full(100, -1), 32, 48, 1.0)[:, 2].any()  # unaugmented samples: never


def test_synthetic_and_cached_float_data_are_only_moved(tmp_path):
    cfg = TrainConfig(data="synthetic", synthetic_size=16, in_chans=1, img_size=16, batch_size=4)
    train, *_ = build_datasets(cfg)
    loader = build_loader(train, cfg, True, device=CPU)
    assert loader.mean is None and loader.erase_generator is None
    x, y = next(iter(loader))
    assert x.dtype == torch.float32 and len(loader) == 4
    assert build_loader(train, cfg, True).__class__.__name__ == "DataLoader"  # no device: the plain loader


def test_a_prefetcher_survives_pickle_and_copy_with_its_loader_attributes():
    import copy
    import pickle

    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(torch.zeros(6, 3, 4, 4, dtype=torch.uint8), torch.arange(6),
                                      torch.arange(6)), batch_size=3)
    prefetcher = DevicePrefetcher(loader, torch.device("cpu"), mean=(0.5,) * 3, std=(0.25,) * 3,
                                  erase_probability=0.5)
    for clone in (pickle.loads(pickle.dumps(prefetcher)), copy.copy(prefetcher), copy.deepcopy(prefetcher)):
        assert clone.batch_size == 3 and len(clone) == 2
        for (x, y), (x0, y0) in zip(clone, prefetcher):
            assert torch.equal(x, x0) and torch.equal(y, y0)
    with pytest.raises(AttributeError, match="no_such_attribute"):
        prefetcher.no_such_attribute
