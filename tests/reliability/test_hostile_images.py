"""Hostile ImageFolder files: each one is loaded correctly or skipped with a counted warning, never a crash.

``--on-bad-image skip`` (the default) serves the next readable image in place of a bad one and
names the file once on stderr with the running count; ``--on-bad-image error`` stops with one line
naming the file. Entries that are no regular file (link loops, broken links, FIFOs) are left out
when the folder is scanned, with one counted warning.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from vitpss.cli import main
from vitpss.config import TrainConfig
from vitpss.data import build_datasets

TINY = ["--img-size", "16", "--patch-size", "4", "--embed-dim", "32", "--depth", "2", "--num-heads", "2",
        "--in-chans", "3", "--batch-size", "4", "--epochs", "1", "--quiet", "--threads", "1"]


def gradient(size: int = 20) -> np.ndarray:
    return np.tile(np.linspace(0, 1, size), (size, 1))


def rgb(value: int, size: int = 20) -> Image.Image:
    return Image.new("RGB", (size, size), (value, value // 2, 255 - value))


def save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def write(data: bytes):
    return lambda path: path.write_bytes(data)


def symlink(target: str):
    return lambda path: os.symlink(target, path)


def fifo(path):
    os.mkfifo(path)


def symlink_loop(path):
    os.symlink(path.name, path)  # a link to itself: opening it fails with ELOOP


jpeg = save(rgb(200), "JPEG")
palette_with_transparency = rgb(90).quantize(8)
palette_with_transparency.info["transparency"] = 0

#: File name -> (how to create it, what must happen: 'loads' or 'skipped').
LOADS = {
    "one-pixel.png": (write(save(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG")), "loads"),
    "cmyk.jpg": (write(save(Image.new("CMYK", (20, 20), (0, 255, 255, 0)), "JPEG")), "loads"),
    "gray16.png": (write(save(Image.fromarray((gradient() * 65535).astype(np.uint16)), "PNG")), "loads"),
    "float.tiff": (write(save(Image.fromarray(gradient().astype(np.float32)), "TIFF")), "loads"),
    "palette.png": (write(save(palette_with_transparency, "PNG")), "loads"),
    "rgba.png": (write(save(rgb(60).convert("RGBA"), "PNG")), "loads"),
    "gray-alpha.png": (write(save(Image.new("LA", (20, 20), (128, 0)), "PNG")), "loads"),
    "bilevel.gif": (write(save(Image.new("1", (20, 20), 1), "GIF")), "loads"),
}
SKIPPED_WHEN_READ = {
    "truncated.jpg": (write(jpeg[: len(jpeg) // 2]), "skipped"),
    "empty.png": (write(b""), "skipped"),
    "not-an-image.jpg": (write(b"#!/bin/sh\necho this is a shell script\n"), "skipped"),
    # 144 M pixels > PIL.Image.MAX_IMAGE_PIXELS (89 M): refused from the header, never decoded (41 kB file)
    "bomb-12000x12000.png": (write(save(Image.new("1", (12000, 12000), 1), "PNG")), "skipped"),
}
LEFT_OUT_WHEN_SCANNED = {
    "symlink-loop.png": (symlink_loop, "skipped"),
    "broken-link.png": (symlink("does-not-exist.png"), "skipped"),
    "fifo.png": (fifo, "skipped"),
}
HOSTILE = {**LOADS, **SKIPPED_WHEN_READ, **LEFT_OUT_WHEN_SCANNED}


def image_folder(root, hostile: dict) -> "os.PathLike":
    """Two classes of 4 good train / 2 good val images each, plus ``hostile`` files in train/cat."""
    for split, count in (("train", 4), ("val", 2)):
        for label, name in enumerate(("cat", "dog")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                rgb(40 + 150 * label + i).save(folder / f"good{i}.png")
    for name, (make, _) in hostile.items():
        make(root / "train" / "cat" / name)
    (root / "train" / "cat" / "notes.txt").write_text("not an image name: ignored")
    os.symlink(".", root / "train" / "cat" / "directory-loop")  # a directory link back to itself
    return root


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory):
    return image_folder(tmp_path_factory.mktemp("hostile"), HOSTILE)


def dataset(root, on_bad_image="skip"):
    cfg = TrainConfig(data=str(root), img_size=16, in_chans=3, augment="none", on_bad_image=on_bad_image)
    return build_datasets(cfg)[0]


def test_scanning_leaves_out_links_loops_and_fifos_with_one_counted_warning(hostile_root, capsys):
    train = dataset(hostile_root)
    names = sorted(os.path.basename(p) for p, _ in train.source.samples)
    good = [f"good{i}.png" for i in range(4)]
    expected = sorted([*LOADS, *SKIPPED_WHEN_READ, *good, *good])  # cat's (its directory loop walked once), dog's
    assert names == expected
    err = capsys.readouterr().err
    assert f"skipped {len(LEFT_OUT_WHEN_SCANNED)} entries of train/" in err and "fifo.png" in err


@pytest.mark.parametrize("name", sorted(SKIPPED_WHEN_READ))
def test_a_bad_image_is_replaced_by_the_next_readable_one_with_a_counted_warning(hostile_root, name, capsys):
    train = dataset(hostile_root)
    index = [os.path.basename(p) for p, _ in train.source.samples].index(name)
    image, label = train[index]
    assert image.shape == (3, 16, 16) and label == train.source.samples[index + 1][1]
    assert [os.path.basename(p) for p in train.source.bad_images()] == [name]
    err = capsys.readouterr().err
    assert f"skipping bad image {train.source.samples[index][0]}" in err and "bad images so far: 1" in err
    train[index]
    assert "skipping" not in capsys.readouterr().err  # named once


@pytest.mark.parametrize("name", sorted(LOADS))
def test_unusual_image_modes_load_and_convert_to_rgb(hostile_root, name):
    train = dataset(hostile_root)
    index = [os.path.basename(p) for p, _ in train.source.samples].index(name)
    image = train.source.read(index)
    assert image.mode == "RGB" and not train.source.bad_images()
    pixels = np.asarray(image)
    if name == "cmyk.jpg":
        assert abs(int(pixels[5, 5, 0]) - 255) < 8 and pixels[5, 5, 1:].max() < 8  # CMYK (0, 255, 255, 0) = red
    if name in ("gray16.png", "float.tiff"):  # full-range 16-bit/float gradients keep their range in 8 bits
        assert pixels[:, 0].max() < 8 and pixels[:, -1].min() > 247 and 100 < pixels.mean() < 155


def test_unreadable_file_is_skipped_unless_running_as_root(tmp_path, capsys):
    root = image_folder(tmp_path / "data", {})
    locked = root / "train" / "cat" / "locked.png"
    rgb(10).save(locked)
    locked.chmod(0)
    try:
        with open(locked, "rb"):
            pytest.skip("this process can read a chmod 000 file (running as root): unreadability cannot be tested")
    except PermissionError:
        pass
    train = dataset(root)
    index = [p for p, _ in train.source.samples].index(str(locked))
    assert train[index][0].shape == (3, 16, 16)
    assert "PermissionError" in capsys.readouterr().err


def test_training_on_the_hostile_folder_with_workers_counts_each_bad_image_and_finishes(hostile_root, tmp_path,
                                                                                        capfd):
    assert main(["train", "--data", str(hostile_root), "--output", str(tmp_path / "run"), "--workers", "2", *TINY]) == 0
    err = capfd.readouterr().err
    assert "Traceback" not in err
    for name in SKIPPED_WHEN_READ:
        assert err.count(f"skipping bad image {hostile_root / 'train' / 'cat' / name}") == 1, err
    assert f"bad images so far: {len(SKIPPED_WHEN_READ)}" in err
    assert (tmp_path / "run" / "summary.json").is_file()


@pytest.mark.parametrize("name", sorted([*SKIPPED_WHEN_READ, "fifo.png"]))
def test_on_bad_image_error_stops_with_one_line_naming_the_file(tmp_path, name, capfd):
    root = image_folder(tmp_path / "data", {name: HOSTILE[name]})
    assert main(["train", "--data", str(root), "--output", str(tmp_path / "run"), "--workers", "2",
                 "--on-bad-image", "error", *TINY]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert name in err and "--on-bad-image skip" in err
