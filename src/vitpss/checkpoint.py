"""Run-directory files: atomic writes, JSON-lines logs, RNG states and checkpoint loading.

Every file is written to a temporary name in the same directory and renamed over the target
(``os.replace``), so a crash never leaves a half-written file. Checkpoints hold only tensors,
numbers, strings, ``None`` and lists/dicts/tuples of them: they load with
``torch.load(path, weights_only=True)``, whose restricted unpickler rebuilds only such values and
refuses any other Python object (so loading cannot run code).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import random
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from .errors import UsageError

CHECKPOINT_FORMAT = "vitpss.train/1"
PRETRAIN_FORMAT = "vitpss.pretrain/1"
RUN_FILES = ("config.yaml", "train_log.jsonl", "val_log.jsonl", "checkpoint.pt", "best.pt", "summary.json")


def _atomic(path: str | Path, write) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    _atomic(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` atomically."""
    _atomic(path, lambda f: torch.save(obj, f))


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy ``src`` to ``dst`` atomically (e.g. checkpoint.pt -> best.pt)."""
    with open(src, "rb") as source:
        _atomic(dst, lambda f: shutil.copyfileobj(source, f))


class JsonlWriter:
    """Appends one JSON object per line to a file, flushed after every line."""

    def __init__(self, path: str | Path) -> None:
        self.file = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.write_many([record])

    def write_many(self, records: Iterable[dict[str, Any]]) -> None:
        """Append ``records`` with one write and one flush."""
        self.file.write("".join(json.dumps(record) + "\n" for record in records))
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def read_jsonl(path: str | Path, keys: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The records of a JSON-lines log, each a JSON object holding every key in ``keys``.

    A torn last line (a crash mid-write) is ignored, as are blank lines; any other line that is
    not such an object raises UsageError naming the file and line.
    """
    path = Path(path)
    lines = [(number, line) for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if line.strip()]
    records = []
    for number, line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == lines[-1][0]:
                break
            raise UsageError(f"{path}, line {number}: not valid JSON") from None
        if not isinstance(record, dict) or any(k not in record for k in keys):
            wanted = f" with keys {', '.join(keys)}" if keys else ""
            raise UsageError(f"{path}, line {number}: expected a JSON object{wanted}")
        records.append(record)
    return records


def truncate_jsonl(path: str | Path, keep) -> None:
    """Rewrite ``path`` atomically with only the records for which ``keep(record)`` is true."""
    path = Path(path)
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path) if keep(r)]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


# --------------------------------------------------------------------------- RNG states


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Python, NumPy, torch (CPU, CUDA) and sampler-generator RNG states as tensors and numbers."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state() if generator is not None else None,
    }
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` saved, also on another device (see :func:`restore_generator`)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available():  # states of GPUs that this machine lacks are dropped
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    if generator is not None and state["generator"] is not None:
        restore_generator(generator, state["generator"])


def restore_generator(generator: torch.Generator, state: torch.Tensor) -> bool:
    """``generator.set_state(state)``; or, for a state of another kind of generator, reseed from it.

    CPU (Mersenne Twister) and CUDA (Philox) generators have states of different sizes and draw
    different streams, so a sequence cannot continue across device types. A checkpoint written on
    one and resumed on the other reseeds the generator from a hash of the saved state (the same
    checkpoint always gives the same stream) and warns. Returns whether the state was restored.
    """
    state = state.cpu().to(torch.uint8)
    if state.numel() == generator.get_state().numel():
        generator.set_state(state)
        return True
    seed = int.from_bytes(hashlib.sha256(state.numpy().tobytes()).digest()[:8], "little") >> 1
    generator.manual_seed(seed)
    warnings.warn(f"the sampler's generator state in the checkpoint is from another device type "
                  f"({state.numel()} bytes, this {generator.device.type} generator takes "
                  f"{generator.get_state().numel()}); reseeded from it, so the random patch choices "
                  f"differ from an uninterrupted run", RuntimeWarning, stacklevel=2)
    return False


# --------------------------------------------------------------------------- loading


def checkpoint_path(path: str | Path, default_name: str = "checkpoint.pt") -> Path:
    """``path`` itself if it is a file, ``path/default_name`` if it is a run directory."""
    path = Path(path)
    if path.is_dir():
        path = path / default_name
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}: give a checkpoint file or a run directory holding {default_name}")
    return path


def verify_checkpoint_file(path: str | Path) -> None:
    """Raise UsageError if ``path`` is not an intact ``torch.save`` zip archive.

    Checks the CRC-32 of every record (``zipfile.ZipFile.testzip``): a truncated file or a flipped
    bit anywhere, which ``torch.load`` would not notice inside tensor data, is reported as damaged.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise UsageError(f"checkpoint {path} is damaged or of another format (not an intact torch.save "
                         f"archive: {err})") from None
    if bad is not None:
        raise UsageError(f"checkpoint {path} is damaged (checksum mismatch in {bad})")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    checkpoint_format: str = CHECKPOINT_FORMAT) -> dict[str, Any]:
    """Load a vitpss checkpoint (file or run directory) with ``weights_only=True``.

    Returns the dict written by ``vitpss train`` (or, with ``checkpoint_format=PRETRAIN_FORMAT``,
    ``vitpss pretrain``): ``model`` (a plain timm state dict), ``config``
    (a plain dict of :class:`~vitpss.config.TrainConfig` fields), ``step``, ``epoch``,
    ``optimizer``, ``lr_scheduler``, ``scaler``, ``ema``, ``rng``, ``best_acc1`` and more.
    Raises UsageError for damaged files (see :func:`verify_checkpoint_file`), files holding
    Python objects other than tensors and plain values (refused: rebuilding them could run code),
    and files that are not such checkpoints.
    """
    path = checkpoint_path(path)
    verify_checkpoint_file(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise UsageError(f"refusing to load {path}: it holds Python objects other than tensors and plain values, "
                         f"and unpickling them could run code; vitpss checkpoints never do") from None
    except Exception as err:  # unreadable despite intact records
        raise UsageError(f"cannot load checkpoint {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != checkpoint_format:
        kind, writer = ("pre-training", "pretrain") if checkpoint_format == PRETRAIN_FORMAT else ("training", "train")
        raise UsageError(f"{path} is not a vitpss {kind} checkpoint (no '{checkpoint_format}' format tag); "
                         f"give a checkpoint.pt or best.pt written by vitpss {writer}")
    return ckpt


#: Checkpoints of a run directory that ``--resume DIR`` considers, newest first (best.pt is a copy
#: of an earlier or the same checkpoint.pt).
RESUME_CANDIDATES = ("checkpoint.pt", "best.pt")


def find_resume_checkpoint(path: str | Path, warn: Callable[[str], None] | None = None, *,
                           checkpoint_format: str = CHECKPOINT_FORMAT) -> tuple[Path, dict[str, Any]]:
    """``(file, checkpoint)`` to resume from: ``path`` itself if a file, else the run directory's newest valid one.

    In a directory, the first valid file of :data:`RESUME_CANDIDATES` wins: ``best.pt`` is only
    ever a copy of an earlier or the same ``checkpoint.pt``, so it is read only when
    ``checkpoint.pt`` is missing or damaged. Damaged candidates are named through ``warn`` when a
    valid one remains. A damaged file named explicitly is an error that points to the fallback.
    """
    path = Path(path)
    if not path.is_dir():
        try:
            return checkpoint_path(path), load_checkpoint(path, checkpoint_format=checkpoint_format)
        except UsageError as err:
            others = [path.parent / n for n in RESUME_CANDIDATES if (path.parent / n).is_file() and n != path.name]
            hint = f"; resume from the run directory ({path.parent}) to fall back to {others[0].name}" if others else ""
            raise UsageError(f"{err}{hint}") from None
    found, problems = [], []
    for name in RESUME_CANDIDATES:
        candidate = path / name
        if not candidate.is_file():
            continue
        try:
            found.append((candidate, load_checkpoint(candidate, checkpoint_format=checkpoint_format)))
            break
        except UsageError as err:
            problems.append(str(err))
    if not found:
        detail = "; ".join(problems) if problems else f"it holds none of {', '.join(RESUME_CANDIDATES)}"
        raise UsageError(f"no valid checkpoint to resume in {path}: {detail}")
    for problem in problems if warn is not None else []:
        warn(f"{problem}; skipping it")
    return found[0]


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state)`` with a one-line UsageError naming mismatching keys and shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{label}: {', '.join(keys[:3])}{more}")
        raise UsageError(f"{source} holds weights of another model ({'; '.join(parts)}); "
                         f"use a checkpoint of this model")
    model.load_state_dict(state)


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete temporary files that writes killed mid-way left in a run directory; returns them."""
    stale = [t for name in RUN_FILES for t in Path(directory).glob(f".{name}.*.tmp")]
    for path in stale:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return stale


def clear_run_files(directory: str | Path, names: Iterable[str] = RUN_FILES) -> None:
    """Delete a previous run's files (only the run-directory contract files) from ``directory``."""
    for name in names:
        with contextlib.suppress(OSError):
            os.unlink(Path(directory) / name)
