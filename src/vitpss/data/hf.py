"""Hugging Face ``datasets`` as an indexable source: a folder written by ``DatasetDict.save_to_disk``, or
``hfds/NAME`` from the hub through timm's ``ReaderHfds``.

Splits: ``--train-split`` (default ``train``) and ``--val-split`` (default: the first of ``validation``,
``val``, ``test``). Columns: ``--image-column`` (default ``image``; an ``Image`` feature, read
undecoded as timm's reader does) and ``--label-column`` (default ``label``; integer classes, named
by a ``ClassLabel`` feature where there is one). Map-style, so the loader's seeded order, sharding,
subsets and sample-exact resume are those of an ImageFolder.
"""

from __future__ import annotations

import io
from types import ModuleType
from typing import Any, BinaryIO, Sequence

import numpy as np

from ..errors import UsageError
from .sources import FolderImages

VAL_SPLITS = ("validation", "val", "test")
INSTALL_HINT = "pip install 'vitpss[datasets]' (or pip install datasets)"


def _datasets() -> ModuleType:
    try:
        import datasets
    except ImportError:
        raise UsageError(f"--data names a Hugging Face dataset, which needs the datasets package: {INSTALL_HINT}") from None
    return datasets


def load_splits(data: str, train_split: str | None, val_split: str | None, image_column: str,
                data_root: str | None = None) -> list[tuple[str, Any]]:
    """``(split name, datasets.Dataset)`` of the training and validation splits of ``--data``."""
    datasets = _datasets()
    if data.lower().startswith("hfds/"):
        return [(name, _hub_split(data, name, image_column, data_root))
                for name in (train_split or "train", val_split or "validation")]
    try:
        saved = datasets.load_from_disk(data)
    except Exception as err:  # noqa: BLE001 - datasets raises many types for damaged folders
        raise UsageError(f"--data {data}: cannot load this saved Hugging Face dataset "
                         f"({type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]})") from None
    splits = list(saved.keys())
    train_name = train_split or "train"
    val_name = val_split or next((s for s in VAL_SPLITS if s in splits), None)
    for flag, name in (("--train-split", train_name), ("--val-split", val_name)):
        if name not in splits:
            raise UsageError(f"--data {data}: no split {name!r} (splits: {', '.join(splits)}): pass {flag} NAME")
    return [(train_name, saved[train_name]), (val_name, saved[val_name])]


def _hub_split(data: str, split: str, image_column: str, data_root: str | None) -> Any:
    from timm.data.readers import create_reader

    try:
        return create_reader(data, root=data_root, split=split, input_key=image_column).dataset
    except Exception as err:  # noqa: BLE001 - offline, unknown name, unknown split: many types
        reason = (str(err).splitlines() or [type(err).__name__])[0][:160]
        raise UsageError(f"--data {data}: cannot load split {split!r} from the Hugging Face hub ({reason}): check the "
                         f"name and the network (or HF_DATASETS_OFFLINE with a cache), or save the dataset with "
                         f"save_to_disk and pass --data DIR") from None


def columns(ds: Any, data: str, split: str, image_column: str, label_column: str,
            split_flag: str = "--train-split") -> tuple[Any, np.ndarray, list[str] | None]:
    """``(dataset with undecoded images, int64 labels, class names or None)`` of one split; UsageError
    for a missing column, a column that holds no images, or labels that are not integer classes."""
    datasets = _datasets()
    for column in (image_column, label_column):
        if column not in ds.features:
            flag = "--image-column" if column == image_column else "--label-column"
            raise UsageError(f"--data {data}: split {split!r} has no column {column!r} (columns: "
                             f"{', '.join(ds.features)}): pass {flag} NAME")
    if not isinstance(ds.features[image_column], datasets.Image):
        raise UsageError(f"--data {data}: column {image_column!r} holds {ds.features[image_column]}, not images: pass "
                         f"--image-column with an Image column")
    ds = ds.cast_column(image_column, datasets.Image(decode=False))
    feature = ds.features[label_column]
    dtype = getattr(feature, "dtype", "")
    if not (isinstance(feature, datasets.ClassLabel) or str(dtype).startswith(("int", "uint"))):
        raise UsageError(f"--data {data}: column {label_column!r} of split {split!r} holds {dtype or feature}, not "
                         f"integer classes: map it to class numbers (e.g. with ClassLabel) or pass --label-column")
    labels = np.asarray(ds.select_columns([label_column]).with_format("numpy")[label_column], dtype=np.int64)
    if labels.size and labels.min() < 0:
        raise UsageError(f"--data {data}: split {split!r} has label {labels.min()} (unlabelled rows): pass "
                         f"{split_flag} with a labelled split")
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    return ds, labels, names


class HFImages(FolderImages):
    """Rows ``rows`` of a ``datasets.Dataset`` whose ``image_column`` is undecoded (``{bytes, path}``);
    bad images are skipped and counted as in :class:`~vitpss.data.sources.FolderImages`."""

    def __init__(self, ds: Any, rows: Sequence[int], labels: Sequence[int], image_column: str, split: str,
                 in_chans: int, on_bad_image: str = "skip") -> None:
        samples = [(f"{split}[{row}]", int(label)) for row, label in zip(rows, labels)]
        super().__init__(samples, in_chans, on_bad_image)
        self.ds, self.rows, self.image_column = ds, [int(r) for r in rows], image_column

    def encoded(self, index: int) -> bytes:
        image = self.ds[self.rows[index]][self.image_column]
        if image.get("bytes"):
            return image["bytes"]
        with open(image["path"], "rb") as f:
            return f.read()

    def open(self, index: int) -> BinaryIO:
        return io.BytesIO(self.encoded(index))
