"""WebDataset shards as an indexed source: ``KEY.jpg`` (or png/webp) + ``KEY.cls`` samples in tar files.

Shards are found by name (``train-*.tar`` / ``val-*.tar`` in ``--data DIR``) or, with ``--data wds/DIR``,
from ``--train-split`` / ``--val-split`` brace patterns or the split names of timm's ``_info.json``;
the names are resolved with timm's WDS reader helpers (``_load_info``, ``_parse_split_info``).

Each shard's tar headers are read once (the sample count comes from there, not from
``_info.json``) and each sample is then read by its byte offset. timm's ``ReaderWds`` streams the
shards through a shuffle buffer instead; vitpss indexes them so that they keep everything an
indexable source has: the seeded epoch order of :class:`~vitpss.data.loader.EpochSampler`, sharding
per rank and per worker, ``--train-subset``, skip-and-count of bad images, and sample-exact resume.
The cost: shards must be local (or mounted) uncompressed ``.tar`` files, read at random offsets.
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path
from types import ModuleType
from typing import BinaryIO, Sequence

from ..errors import UsageError
from .sources import FolderImages

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # timm's WDS input_key 'jpg;png;webp', plus jpeg
INSTALL_HINT = "pip install 'vitpss[webdataset]' (or pip install webdataset)"
#: A member of a shard: ``(offset of its data in the tar file, size)``.
Member = tuple[int, int]


def _webdataset() -> ModuleType:
    try:
        import webdataset
    except ImportError:
        raise UsageError(f"--data names WebDataset shards, which need the webdataset package: {INSTALL_HINT}") from None
    return webdataset


def shard_paths(data: str, split: str, pattern: str | None) -> list[Path]:
    """The shard files of ``split`` (``train`` or ``val``) for ``--data data``; UsageError when there are none."""
    _webdataset()
    from timm.data.readers.reader_wds import _load_info, _parse_split_info

    explicit = data.lower().startswith("wds/")
    root = Path(data[4:] if explicit else data).expanduser()
    if not root.is_dir():
        raise UsageError(f"--data {data}: no such directory of WebDataset shards")
    if pattern is None and not (explicit and any((root / n).is_file() for n in ("_info.json", "info.json"))):
        found = sorted(root.glob(f"{split}-*.tar"))
        if not found:
            flag = f"--{split}-split"
            raise UsageError(f"--data {data}: no {split}-*.tar shards in {root} (name them {split}-000000.tar, ..., "
                             f"or pass --data wds/{root} {flag} 'PATTERN-{{000000..000009}}.tar')")
        return found
    import logging

    logging.getLogger("timm.data.readers.reader_wds").setLevel(logging.ERROR)  # 'no info file' is expected here
    try:
        names = _parse_split_info(pattern or split, _load_info(str(root))).filenames
    except (RuntimeError, KeyError, ValueError) as err:
        raise UsageError(f"--data {data}: cannot resolve the {split} split ({err}): pass --{split}-split with a "
                         f"shard pattern such as '{split}-{{000000..000009}}.tar'") from None
    paths = [root / name for name in names]
    missing = [p for p in paths if not p.is_file()]
    if missing or not paths:
        shown = missing[0] if missing else pattern
        raise UsageError(f"--data {data}: the {split} split names {len(paths)} shards, {len(missing)} missing "
                         f"(e.g. {shown}): check --{split}-split")
    return paths


def index_shards(paths: Sequence[Path], on_bad_image: str = "skip") -> tuple[list[tuple[str, int]], list[tuple[int, Member]]]:
    """``(name, label)`` samples and ``(shard number, image member)`` locations of the shards, in tar order.

    Read from the tar headers (and the small ``.cls`` members). Samples without an image or a
    ``.cls``, empty shards and the rest of a shard after a damaged header are left out with one
    warning each (``on_bad_image="skip"``) or are a UsageError (``"error"``); a ``.cls`` that is
    not an integer is always a UsageError.
    """
    base_plus_ext = _webdataset().tariterators.base_plus_ext
    samples: list[tuple[str, int]] = []
    where: list[tuple[int, Member]] = []
    for number, path in enumerate(paths):
        groups: dict[str, dict[str, tarfile.TarInfo]] = {}
        problem = ""
        try:
            if path.stat().st_size == 0:
                raise EOFError
            with tarfile.open(path, "r:") as tar:
                try:
                    for info in tar:
                        prefix, ext = base_plus_ext(info.name) if info.isfile() else (None, None)
                        if prefix is not None:
                            groups.setdefault(prefix, {})[ext.lower()] = info
                except tarfile.TarError as err:
                    problem = f"damaged after {len(groups)} samples ({err})"
                for key, members in groups.items():
                    image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
                    if image is None or "cls" not in members:
                        _bad(path, f"sample {key!r} has no {'image' if image is None else '.cls'} member", on_bad_image)
                        continue
                    samples.append((f"{path}:{image.name}", _read_label(tar, members["cls"], path)))
                    where.append((number, (image.offset_data, image.size)))
        except EOFError:
            pass  # an empty file: reported below
        except (tarfile.TarError, OSError) as err:
            problem = f"not a readable uncompressed tar file ({type(err).__name__}: {err})"
        if not groups and not problem:
            problem = "empty: no samples"
        if problem:
            _bad(path, problem, on_bad_image)
    return samples, where


def _read_label(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> int:
    extracted = tar.extractfile(member)
    text = extracted.read(64).decode("utf-8", "replace").strip() if extracted else ""
    try:
        label = int(text)
    except ValueError:
        label = -1
    if label < 0:
        raise UsageError(f"{path}: {member.name} holds {text!r}, not a class number (0, 1, ...): write each "
                         f"sample's class index as its .cls")
    return label


def _bad(path: Path, problem: str, on_bad_image: str) -> None:
    if on_bad_image == "error":
        raise UsageError(f"shard {path}: {problem}: fix or remove it, or pass --on-bad-image skip")
    print(f"vitpss: warning: shard {path}: {problem}; skipped (--on-bad-image error stops instead)",
          file=sys.stderr, flush=True)


class ShardImages(FolderImages):
    """Images stored in tar shards, read by offset; bad images are skipped and counted as in
    :class:`~vitpss.data.sources.FolderImages`. Each process (and loader worker) opens each shard
    once, on first use."""

    def __init__(self, samples: Sequence[tuple[str, int]], where: Sequence[tuple[int, Member]],
                 paths: Sequence[Path], in_chans: int, on_bad_image: str = "skip") -> None:
        super().__init__(samples, in_chans, on_bad_image)
        self.where, self.paths = list(where), [str(p) for p in paths]
        self._files: dict[int, int] = {}
        self._pid = os.getpid()

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            for fd in self.__dict__.get("_files", {}).values():
                os.close(fd)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}}  # file descriptors do not travel to workers

    def encoded(self, index: int) -> bytes:
        if self._pid != os.getpid():  # a forked worker: open its own descriptors
            self._files, self._pid = {}, os.getpid()
        shard, (offset, size) = self.where[index]
        if shard not in self._files:
            self._files[shard] = os.open(self.paths[shard], os.O_RDONLY)
        return os.pread(self._files[shard], size, offset)

    def open(self, index: int) -> BinaryIO:
        return io.BytesIO(self.encoded(index))
