"""The prepared GPU run: environment, correctness on CUDA, speed, and evidence on full CIFAR-10, as JSON.

    PYTHONPATH=src python3 benchmarks/gpu_run.py --out DIR          # on a CUDA machine, no install
    PYTHONPATH=src python3 benchmarks/gpu_run.py --out DIR --smoke  # every part on CPU at toy sizes

Parts, in this order, each in its own process with its own time limit (``--limits``), each writing
``DIR/<part>.json`` as soon as it ends (and after every check inside it), so a later crash loses
nothing; ``DIR/summary.json`` and a short table come last; ``DIR/gpu_run.log`` holds the output:

* ``environment`` (seconds): Python, torch, torchvision, timm, CUDA, the GPU; stops with one line
  when torch or timm is older than the project's floor (pyproject.toml). Unpacks the data.
* ``correctness`` (60 s): ``torch.cuda.set_sync_debug_mode("error")`` around the steady-state steps
  of the real Trainer (default recipe, device prefetcher) between log points; bf16 autocast losses
  against fp32 over 50 steps; fp16 + GradScaler stopped and resumed against the uninterrupted run;
  ``--compile`` graphs = keep rates (and the same losses as eager); the prefetcher's CUDA batches
  against the CPU path's; BEiT's relative-position-bias attention on CUDA against the explicit
  per-sample reference of tests/test_patching_relpos.py.
* ``speed`` (120 s, synthetic batches already on the GPU): step time per keep rate for
  ``deit_small_patch16_224`` (batch 256) and ``deit_base_patch16_224`` (batch 128), bf16, eager; the
  default schedule's efficiency (ideal time ratio from those step times / measured ratio of a
  400-step cosine 0.2->1 run against 400 steps at all patches); inference images/s at keep rates 1,
  0.5, 0.25 (ViT-B, batch 256); launch-bound steps (host issue time ~ step time) and what may fix
  them (a larger batch, CUDA graphs via ``mode="reduce-overhead"``); compiled step times and
  compile times, as many as the time limit allows.
* ``evidence`` (240 s): full CIFAR-10 (JPEG copy; 50,000 training images in memory, the 10,000
  test images), a patch-4 ViT; a one-epoch calibration sets the epochs so that the all-patch run
  takes about ``--evidence-seconds``; baseline (all patches) and the default recipe at equal
  epochs: per-epoch acc1 and times, the default's time to the baseline's final acc1, acc1 at
  inference keep rates 0.5 and 0.25.

The data: a copy of ``../shared/data/cifar10-jpg.tar.gz`` at ``.gpu-data/cifar10-jpg.tar.gz``
(``.gpu-data/`` ignored through ``.git/info/exclude``), unpacked into a temporary folder here;
``--data`` also takes a folder with ``train/`` and ``val/``. ``--smoke`` builds a tiny ImageFolder
instead and runs every check at toy sizes on the CPU; checks that need CUDA say
``"skipped": "needs CUDA"`` (tests/test_gpu_run.py runs it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:  # runs from the source tree, no install
    sys.path.insert(0, str(REPO / "src"))

DEFAULT_DATA = REPO / ".gpu-data" / "cifar10-jpg.tar.gz"
LIMITS = {"correctness": 60, "speed": 120, "evidence": 240}  # seconds per part (the budget)
GRACE_S = 15  # a part is killed this long after its limit; it plans its own work inside the limit
SKIP_CUDA = "needs CUDA"
RATES = (1.0, 0.75, 0.5, 0.35, 0.2)


# --------------------------------------------------------------------------- shared pieces


@dataclasses.dataclass
class Context:
    """What a part needs: where to write, the data, the work folder, the clock."""

    out: Path
    work: Path
    data: Path  # ImageFolder root with train/ and val/
    full_data: bool  # the full CIFAR-10 copy (else a generated stand-in)
    smoke: bool
    deadline: float  # time.time() by which the part must be done

    @property
    def device(self) -> str:
        import torch

        return "cuda" if torch.cuda.is_available() and not self.smoke else "cpu"

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def remaining(self) -> float:
        return self.deadline - time.time()


class PartLog:
    """A part's JSON file, rewritten after every check so that a crash or a kill keeps what ran."""

    def __init__(self, ctx: Context, part: str) -> None:
        self.path, self.start = ctx.out / f"{part}.json", time.perf_counter()
        self.data: dict[str, Any] = {"part": part, "smoke": ctx.smoke, "device": ctx.device, "finished": False,
                                     "checks": {}}
        self.write()

    def write(self) -> None:
        self.data["seconds"] = round(time.perf_counter() - self.start, 1)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        tmp.replace(self.path)

    def finish(self) -> None:
        self.data["finished"] = True
        self.write()

    def check(self, name: str, fn: Callable[[], dict], *, min_seconds: float = 0.0,
              ctx: Optional[Context] = None) -> dict:
        """Run one check; its result (or its error) is written at once. Skipped when too little time is left."""
        if ctx is not None and ctx.remaining() < min_seconds:
            left = ctx.remaining()
            result: dict[str, Any] = {"skipped": f"part time limit ({left:.0f} s left, needs ~{min_seconds:.0f})"}
        else:
            print(f"gpu_run: {self.data['part']}: {name} ...", flush=True)
            start = time.perf_counter()
            try:
                result = fn()
            except Exception as err:  # noqa: BLE001 - one failing check must not lose the others
                result = {"ok": False, "error": f"{type(err).__name__}: {err}"[:2000],
                          "traceback": traceback.format_exc()[-3000:]}
            result["seconds"] = round(time.perf_counter() - start, 2)
        self.data["checks"][name] = result
        self.write()
        status = "skipped" if "skipped" in result else f"ok={result.get('ok')}"
        print(f"gpu_run: {self.data['part']}: {name}: {status} ({result.get('seconds', 0)} s)", flush=True)
        return result


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def make_image_folder(root: Path, *, classes: int, per_class: int, val_per_class: int, size: int) -> Path:
    """``root/{train,val}/c<k>/<i>.jpg``: class ``k`` a colour, with per-image noise (learnable, tiny)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (classes, 3))
    for split, count in (("train", per_class), ("val", val_per_class)):
        for k in range(classes):
            folder = root / split / f"c{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.clip(palette[k] + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=95)
    return root


_DECODE_SOURCE: Any = None
_DECODED: dict[tuple, Any] = {}


def _decode_chunk(indices: list[int]) -> Any:
    import numpy as np

    return np.stack([np.asarray(_DECODE_SOURCE[i][0]) for i in indices])


def parallel_decode(images: Any, desc: str, progress: bool = True) -> Any:
    """``vitpss.data.decode_folder`` over all CPUs (forked workers), cached per image list: the
    benchmark decodes 60,000 JPEGs once instead of once per run, in about a second."""
    import multiprocessing

    import numpy as np

    from vitpss.data import to_uint8_tensor

    global _DECODE_SOURCE
    key = (desc, len(images), images.samples[0][0] if len(images) else "", images.in_chans)
    if key not in _DECODED:
        _DECODE_SOURCE = images
        workers = max(1, min(16, os.cpu_count() or 1))
        chunks = [c.tolist() for c in np.array_split(np.arange(len(images)), workers * 4) if len(c)]
        if workers == 1 or len(images) < 64:
            arrays = [_decode_chunk(c) for c in chunks]
        else:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                arrays = pool.map(_decode_chunk, chunks)
        _DECODED[key] = to_uint8_tensor(np.concatenate(arrays), images.in_chans)
    return _DECODED[key]


def use_parallel_decode() -> None:
    """Decode ImageFolders over all CPUs, once per image list, and read their sizes once (``--in-memory
    on`` reads every header to check that all images have one size: 60,000 for CIFAR-10, per run)."""
    import vitpss.data

    image_sizes, sizes = vitpss.data.image_sizes, {}

    def cached_image_sizes(samples: Any, stop_at: int = 2) -> set:
        key = (len(samples), samples[0][0] if len(samples) else "", stop_at)
        if key not in sizes:
            sizes[key] = image_sizes(samples, stop_at)
        return sizes[key]

    vitpss.data.decode_folder = parallel_decode
    vitpss.data.image_sizes = cached_image_sizes


def run_trainer(cfg: Any, on_epoch: Optional[Callable[[Any, int], None]] = None) -> tuple[Any, Optional[dict]]:
    """The body of :func:`vitpss.trainer.train` (a fresh run), keeping the Trainer: ``(trainer, summary)``."""
    from vitpss.config import validate
    from vitpss.runtime import num_threads
    from vitpss.trainer import Trainer

    cfg = validate(cfg)
    with num_threads(cfg.threads):
        trainer = Trainer(cfg)
        if on_epoch is not None:
            end_epoch = trainer.end_epoch

            def hooked(epoch: int) -> None:
                end_epoch(epoch)
                on_epoch(trainer, epoch)
            trainer.end_epoch = hooked
        trainer.open_logs(resuming=False)
        trainer.loop_start = time.perf_counter()  # after data and model set-up: what per-epoch wall times count from
        try:
            summary = trainer.run()
        finally:
            trainer.close_logs()
    return trainer, summary


# --------------------------------------------------------------------------- environment (in the parent)


def floor_version(requirement: str) -> Optional[str]:
    """The ``>=`` floor of ``requirement`` (e.g. ``timm``) in pyproject.toml's dependencies, or None."""
    text = (REPO / "pyproject.toml").read_text()
    match = re.search(rf'"{re.escape(requirement)}\s*>=\s*([0-9][0-9a-zA-Z.]*)', text)
    return match.group(1) if match else None


def version_tuple(version: str) -> tuple[int, ...]:
    """``2.11.0+cu130`` -> ``(2, 11, 0)`` (release numbers only)."""
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3])


def environment(ctx: Context) -> dict:
    import timm
    import torch
    import torchvision

    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "timm": timm.__version__, "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "cpus": os.cpu_count(), "host": platform.machine(), "smoke": ctx.smoke, "floors": {}, "problems": [],
    }
    with contextlib.suppress(Exception):
        info["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                        timeout=10).stdout.strip() or None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                    bf16=torch.cuda.is_bf16_supported(), cudnn=torch.backends.cudnn.version())
    for name, installed in (("torch", torch.__version__), ("timm", timm.__version__)):
        floor = floor_version(name)
        info["floors"][name] = floor
        if floor and version_tuple(installed) < version_tuple(floor):
            info["problems"].append(f"{name} {installed} is older than the project's floor {floor} (pyproject.toml): "
                                    f"carry the pinned {name} wheel (docs/benchmarks.md, 'GPU run')")
    if not ctx.smoke and not torch.cuda.is_available():
        info["problems"].append("no CUDA device here (torch.cuda.is_available() is False): run it on a GPU "
                                "machine, or pass --smoke for the CPU rehearsal")
    return info


def prepare_data(source: Optional[Path], work: Path, smoke: bool) -> tuple[Path, bool, dict]:
    """The ImageFolder the parts read: the unpacked archive, the given folder, or a generated stand-in."""
    start = time.perf_counter()
    if smoke:
        root = make_image_folder(work / "data", classes=4, per_class=24, val_per_class=4, size=16)
        return root, False, {"data": "generated (smoke)", "seconds": round(time.perf_counter() - start, 2)}
    if source is not None and source.is_dir():
        return source, True, {"data": str(source), "seconds": 0.0}
    if source is not None and source.is_file():
        target = work / "cifar10"
        target.mkdir(parents=True, exist_ok=True)
        try:  # tar is several times faster than Python's tarfile on 60,000 members
            subprocess.run(["tar", "-xzf", str(source), "-C", str(target)], check=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            with tarfile.open(source) as archive:
                archive.extractall(target)
        roots = [p.parent for p in target.rglob("train") if (p.parent / "val").is_dir()]
        if roots:
            return roots[0], True, {"data": str(source), "seconds": round(time.perf_counter() - start, 2)}
    root = make_image_folder(work / "data", classes=10, per_class=200, val_per_class=20, size=32)
    note = (f"no data at {source}: copy ../shared/data/cifar10-jpg.tar.gz to .gpu-data/ (docs/benchmarks.md); "
            f"a generated stand-in was used and the evidence part is skipped")
    return root, False, {"data": "generated", "problem": note, "seconds": round(time.perf_counter() - start, 2)}


# --------------------------------------------------------------------------- correctness


def small_config(ctx: Context, output: Path, **overrides: Any) -> Any:
    """A small patch-4 ViT on the data folder (a class-balanced subset of it), in memory."""
    from vitpss.config import TrainConfig

    size = 16 if ctx.smoke else 32
    model = (dict(embed_dim=32, depth=1, num_heads=2) if ctx.smoke else dict(embed_dim=192, depth=4, num_heads=3))
    base = dict(model="vit_tiny_patch16_224", img_size=size, patch_size=4, **model, data=str(ctx.data),
                in_memory="on", augment="pad-crop", batch_size=8 if ctx.smoke else 128, epochs=1, workers=0,
                quiet=True, output=str(output), overwrite=True, seed=0, device=ctx.device,
                threads=1 if ctx.smoke else None, warmup_epochs=0.0)
    if not ctx.smoke:
        base.update(train_subset=1600 if ctx.full_data else None, val_subset=20 if ctx.full_data else None)
    return TrainConfig(**{**base, **overrides})


@contextlib.contextmanager
def armed_between_log_points(arm: Callable[[bool], None]) -> Iterator[list[int]]:
    """``arm(True)`` from each log point of an epoch to the next, ``arm(False)`` around logging and
    outside epochs (evaluation, checkpoints); yields the list of steps run while armed, per span."""
    from vitpss.trainer import Trainer

    spans: list[int] = []
    since: list[Optional[int]] = [None]
    in_epoch = [False]  # save() at an epoch end logs too: arming there would catch the checkpoint's copies
    write_log, train_epoch = Trainer.write_log, Trainer.train_epoch

    def disarm(trainer: Any) -> None:
        arm(False)
        if since[0] is not None:
            spans.append(trainer.state.step - since[0])
            since[0] = None

    def logged(self: Any) -> None:
        disarm(self)
        write_log(self)
        if in_epoch[0]:
            since[0] = self.state.step
            arm(True)

    def epoch(self: Any, index: int) -> bool:
        in_epoch[0] = True
        try:
            return train_epoch(self, index)
        finally:
            in_epoch[0] = False
            disarm(self)

    Trainer.write_log, Trainer.train_epoch = logged, epoch
    try:
        yield spans
    finally:
        Trainer.write_log, Trainer.train_epoch = write_log, train_epoch
        arm(False)


def check_sync_debug(ctx: Context, name: str, **flags: Any) -> dict:
    """No host sync in >= 100 steady-state steps between log points (CUDA: sync debug mode "error")."""
    import torch

    def arm(on: bool) -> None:
        if ctx.cuda:
            torch.cuda.set_sync_debug_mode("error" if on else 0)

    # full data: one epoch of 125 steps (the subset), log points every 25: 100 steps armed
    log_every = 4 if ctx.smoke else 25 if ctx.full_data else 5
    cfg = small_config(ctx, ctx.work / f"sync_{name}", augment="randaug", log_every=log_every, **flags)
    images = 16000 if ctx.full_data else sum(1 for p in (ctx.data / "train").rglob("*") if p.is_file())
    armed_per_epoch = images // cfg.batch_size - log_every
    cfg = dataclasses.replace(cfg, epochs=2 if ctx.smoke else max(1, math.ceil(100 / max(armed_per_epoch, 1))))
    result: dict[str, Any] = {"recipe": {k: getattr(cfg, k) for k in ("schedule", "low", "high", "quantum", "sampler",
                                                                        "augment", "amp", "mixup", "ema_decay",
                                                                        "clip_grad", "drop_path", "batch_size")},
                              "log_every": log_every}
    with armed_between_log_points(arm) as spans:
        try:
            run_trainer(cfg)
        except RuntimeError as err:
            frames = [f"{f.filename.split('/src/')[-1]}:{f.lineno} {f.name}" for f in
                      traceback.extract_tb(err.__traceback__)][-6:]
            result.update(ok=False, error=str(err).splitlines()[0][:500], where=frames, armed_steps=sum(spans))
            return result
    result["armed_steps"], result["epochs"] = sum(spans), cfg.epochs
    if not ctx.cuda:
        result["skipped"] = SKIP_CUDA + " (the run and its arming ran on CPU without sync debug mode)"
        return result
    result["ok"] = result["armed_steps"] >= 100
    return result


def check_bf16_vs_fp32(ctx: Context) -> dict:
    """50 steps' losses under bf16 autocast against fp32 (TF32 matmuls, as the Trainer sets on CUDA)."""
    steps, tolerance = (6 if ctx.smoke else 50), 0.03
    losses = {}
    for amp in ("off", "bf16"):
        cfg = small_config(ctx, ctx.work / f"amp_{amp}", amp=amp, max_steps=steps, log_every=10)
        run_trainer(cfg)
        losses[amp] = [r["loss"] for r in read_jsonl(Path(cfg.output) / "train_log.jsonl")]
    rel = [abs(a - b) / max(abs(a), 1e-6) for a, b in zip(losses["off"], losses["bf16"])]
    return {"steps": len(rel), "tolerance_rel": tolerance, "max_rel_diff": max(rel),
            "mean_rel_diff": statistics.fmean(rel), "first_last_fp32": [losses["off"][0], losses["off"][-1]],
            "first_last_bf16": [losses["bf16"][0], losses["bf16"][-1]],
            "ok": len(rel) == steps and max(rel) <= tolerance}


def check_fp16_resume(ctx: Context) -> dict:
    """``vitpss train --amp fp16 --clip-grad 1`` stopped with --max-steps and resumed = uninterrupted
    (the check of the former benchmarks/gpu_check.py, in this process)."""
    from vitpss.cli import main as vitpss

    amp = "fp16" if ctx.cuda else "off"
    model = (["--img-size", "16", "--patch-size", "4", "--embed-dim", "32", "--depth", "1", "--num-heads", "2",
              "--in-chans", "1", "--synthetic-size", "64", "--batch-size", "8", "--threads", "1"] if ctx.smoke else
             ["--model", "deit_tiny_patch16_224", "--img-size", "64", "--synthetic-size", "1024", "--batch-size", "64"])
    stop = 4 if ctx.smoke else 20  # of 2 epochs: 16 steps (smoke), 32 steps
    base = ["train", *model, "--data", "synthetic", "--device", ctx.device, "--amp", amp, "--clip-grad", "1.0",
            "--epochs", "2", "--seed", "0", "--quiet", "--overwrite", "--log-every", "5"]
    whole, parts = ctx.work / "fp16_whole", ctx.work / "fp16_parts"
    codes = [vitpss(base + ["--output", str(whole)]), vitpss(base + ["--output", str(parts), "--max-steps", str(stop)]),
             vitpss(["train", "--resume", str(parts), "--quiet"])]
    result: dict[str, Any] = {"amp": amp, "exit_codes": codes, "stopped_at": stop}
    if not ctx.cuda:
        result["note"] = "fp16 needs CUDA: on CPU the same stop/resume ran with --amp off"
    if any(codes):
        return {**result, "ok": False}
    a = {r["step"]: r["loss"] for r in read_jsonl(whole / "train_log.jsonl")}
    b = {r["step"]: r["loss"] for r in read_jsonl(parts / "train_log.jsonl")}
    after = [s for s in a if s >= stop]
    before = [s for s in a if s < stop]
    result.update(steps_compared=len(after), same_steps=set(a) == set(b),
                  max_loss_diff_before_stop=max(abs(a[s] - b[s]) for s in before),  # run-to-run determinism
                  max_loss_diff_after_resume=max(abs(a[s] - b[s]) for s in after) if after else None,
                  tolerance=1e-3)
    result["ok"] = bool(after) and result["same_steps"] and result["max_loss_diff_after_resume"] < 1e-3
    return result


def check_compile(ctx: Context) -> dict:
    """``--compile``: one graph per keep rate of a cyclic schedule (3 rates), losses as eager."""
    import torch
    from torch._dynamo.utils import counters

    backend = "inductor" if ctx.cuda else "eager"  # inductor on a CPU would take minutes
    flags = dict(schedule="cyclic", low=0.8 if ctx.smoke else 0.6, quantum=0.2, data="synthetic",
                 synthetic_size=96 if ctx.smoke else 1536, in_memory="auto", augment="none", amp="off", drop_path=0.0,
                 log_every=8, train_subset=None, val_subset=None)
    runs = {}
    compile_fn = torch.compile
    for name in ("eager", "compiled"):
        torch._dynamo.reset()
        counters.clear()
        cfg = small_config(ctx, ctx.work / f"compile_{name}", compile=name == "compiled", **flags)
        torch.compile = lambda net, **kw: compile_fn(net, **{**kw, "backend": backend})  # type: ignore[assignment]
        try:
            start = time.perf_counter()
            run_trainer(cfg)
            seconds = time.perf_counter() - start
        finally:
            torch.compile = compile_fn  # type: ignore[assignment]
        records = read_jsonl(Path(cfg.output) / "train_log.jsonl")
        runs[name] = {"rates": [r["keep_rate"] for r in records], "losses": [r["loss"] for r in records],
                      "graphs": counters["stats"]["unique_graphs"], "seconds": round(seconds, 1)}
    eager, compiled = runs["eager"], runs["compiled"]
    rel = max(abs(a - b) / max(abs(a), 1e-6) for a, b in zip(eager["losses"], compiled["losses"]))
    rates = sorted(set(compiled["rates"]))
    return {"backend": backend, "keep_rates": rates, "graphs": compiled["graphs"], "max_rel_loss_diff": rel,
            "tolerance_rel": 2e-3, "eager_seconds": eager["seconds"], "compiled_seconds": compiled["seconds"],
            "ok": compiled["graphs"] == len(rates) and eager["rates"] == compiled["rates"] and rel <= 2e-3}


def check_prefetch(ctx: Context) -> dict:
    """The device prefetcher's batches (CUDA) equal the CPU path's: in-memory and on-disk ImageFolders,
    ``pad-crop`` (to 1e-4) and ``randaug`` (labels; erased noise comes from each device's own generator).
    On CPU (smoke) the CPU prefetcher is compared with the float loader (no device)."""
    import torch

    from vitpss.config import TrainConfig
    from vitpss.data import build_datasets, build_loader

    target = torch.device("cuda") if ctx.cuda else None
    checks = {}
    for in_memory in ("on", "off"):
        for augment in ("pad-crop", "randaug"):
            cfg = TrainConfig(data=str(ctx.data), img_size=16 if ctx.smoke else 32, batch_size=16, augment=augment,
                              in_memory=in_memory, workers=0 if ctx.smoke else 2, quiet=True,
                              train_subset=None if ctx.smoke else 8, val_subset=None if ctx.smoke else 2)
            train, *_ = build_datasets(cfg)
            batches = {}
            for key, device in (("cpu", torch.device("cpu")), ("target", target)):
                loader = build_loader(train, cfg, True, device=device)
                loader.sampler.set_epoch(1)
                batches[key] = [(x.cpu(), y.cpu()) for x, y, *_ in loader]
            diffs = [(a - b).abs() for (a, _), (b, _) in zip(batches["cpu"], batches["target"])]
            checks[f"{in_memory}-{augment}"] = {
                "batches": len(diffs),
                "labels_equal": all(torch.equal(ya, yb) for (_, ya), (_, yb) in zip(batches["cpu"], batches["target"])),
                "share_equal_pixels": min(float((d < 1e-4).float().mean()) for d in diffs),
                "max_diff": max(float(d.max()) for d in diffs)}
    ok = all(c["labels_equal"] and c["batches"] > 0 for c in checks.values()) and all(
        c["max_diff"] < 1e-4 for k, c in checks.items() if k.endswith("pad-crop"))
    return {"target": "cuda" if ctx.cuda else "float loader (no device)", "checks": checks, "ok": ok}


def check_beit_bias(ctx: Context) -> dict:
    """BEiT's relative-position-bias attention (fused SDPA with the bias of the kept tokens) on the
    device against tests/test_patching_relpos.py's per-sample reference (explicit indexing, math
    attention), fp32 with TF32 off, every BEiT variant of that test."""
    import torch

    import vitpss

    sys.path.insert(0, str(REPO / "tests"))
    from test_patching_relpos import BEIT_VARIANTS, beit_reference_logits, images, make_beit

    device = torch.device(ctx.device)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    diffs = {}
    try:
        for variant in BEIT_VARIANTS:
            model = make_beit(variant).to(device).eval()
            vitpss.attach(model, sampler="random", generator=torch.Generator(device).manual_seed(3))
            x = images(4).to(device)
            with torch.no_grad(), vitpss.keep_rate(model, 0.5):
                out = model(x)
                keep = vitpss.get_keep_indices(model)
                expected = beit_reference_logits(model, x, keep.cpu())
            diffs[variant] = float((out - expected).abs().max())
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return {"device": str(device), "max_abs_diff": diffs, "tolerance": 1e-4, "ok": max(diffs.values()) < 1e-4}


def part_correctness(ctx: Context) -> PartLog:
    log = PartLog(ctx, "correctness")
    use_parallel_decode()
    # cheapest first; the inductor compiles last (the part's kill comes GRACE_S after its limit)
    log.check("sync_debug_default", lambda: check_sync_debug(ctx, "default"))
    log.check("bf16_vs_fp32", lambda: check_bf16_vs_fp32(ctx), ctx=ctx, min_seconds=5)
    log.check("fp16_resume", lambda: check_fp16_resume(ctx), ctx=ctx, min_seconds=8)
    log.check("prefetch", lambda: check_prefetch(ctx), ctx=ctx, min_seconds=4)
    log.check("beit_bias", lambda: check_beit_bias(ctx), ctx=ctx, min_seconds=3)
    log.check("compile", lambda: check_compile(ctx), ctx=ctx, min_seconds=10 if ctx.cuda else 0)
    if not ctx.smoke:  # beyond the list: the step's optional parts under sync debug mode too
        log.check("sync_debug_extras", lambda: check_sync_debug(ctx, "extras", mixup=0.8, ema_decay=0.999,
                                                                 clip_grad=1.0, drop_path=0.1), ctx=ctx, min_seconds=8)
    return log


# --------------------------------------------------------------------------- speed


SPEED_MODELS = (("deit_small_patch16_224", 256), ("deit_base_patch16_224", 128))


class StepBench:
    """One model's training step on a fixed synthetic batch on the device, bf16, fused AdamW."""

    def __init__(self, ctx: Context, name: str, batch: int) -> None:
        import timm
        import torch

        import vitpss
        from vitpss.optim import create_adamw
        from vitpss.patching import patch_samplers

        torch.manual_seed(0)
        tiny = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2) if ctx.smoke else {}
        self.device, self.batch = ctx.device, (4 if ctx.smoke else batch)
        self.model = vitpss.attach(timm.create_model(name, **tiny), sampler="random").to(self.device)
        self.samplers = patch_samplers(self.model)
        self.net = self.model
        size = self.model.patch_embed.img_size
        self.x = torch.randn(self.batch, 3, *size, device=self.device)
        self.y = torch.randint(0, self.model.num_classes, (self.batch,), device=self.device)
        self.optimizer = create_adamw(self.model, lr=1e-6, weight_decay=0.05)
        self.before_step: Callable[[], None] = lambda: None
        self.rows: dict[float, dict] = {}  # the eager step table, once measured

    def step(self, rate: float) -> None:
        import torch

        for sampler in self.samplers:
            sampler.train_keep_rate = rate
        self.before_step()
        with torch.autocast(self.device, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(self.net(self.x), self.y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def timed(self, rate: float, steps: int) -> tuple[float, float]:
        """(seconds per step over ``steps`` back-to-back steps, host seconds to issue the first one).

        The first step is issued into an empty queue, so its issue time is the host's own cost
        (later steps would wait for the queue once the GPU falls behind)."""
        sync(self.device)
        start = time.perf_counter()
        self.step(rate)
        issued = time.perf_counter() - start
        for _ in range(steps - 1):
            self.step(rate)
        sync(self.device)
        return (time.perf_counter() - start) / steps, issued

    def table(self, rates: tuple[float, ...], *, warmup: int, steps: int, samples: int) -> dict[float, dict]:
        """Median step and host-issue ms per rate; rates interleaved so drift hits all alike."""
        for rate in rates:
            self.timed(rate, warmup)
        raw: dict[float, list[tuple[float, float]]] = {r: [] for r in rates}
        for _ in range(samples):
            for rate in rates:
                raw[rate].append(self.timed(rate, steps))
        return {r: {"step_ms": 1e3 * statistics.median(t for t, _ in v),
                    "host_ms": 1e3 * statistics.median(h for _, h in v)} for r, v in raw.items()}


def schedule_rates(steps: int) -> list[float]:
    import vitpss

    schedule = vitpss.build_schedule("cosine", low=0.2, high=1.0, quantum=0.2, steps_per_epoch=steps, epochs=1)
    return [float(schedule(s)) for s in range(steps)]


def speed_model(ctx: Context, log: PartLog, name: str, batch: int) -> Optional[StepBench]:
    """Eager step table (the issue's rates and the schedule's), then the schedule's efficiency."""
    import vitpss

    sizes = dict(warmup=1, steps=1, samples=2) if ctx.smoke else dict(warmup=3, steps=5, samples=3)
    run_steps = 8 if ctx.smoke else 400
    plan = schedule_rates(run_steps)
    bench = StepBench(ctx, name, batch)
    all_rates = tuple(sorted(set(RATES) | set(plan), reverse=True))

    def table() -> dict:
        rows = bench.table(all_rates, **sizes)
        full = rows[1.0]["step_ms"]
        out = [{"keep_rate": r, "tokens": vitpss.token_count(bench.model, r), **rows[r],
                "time_vs_full": rows[r]["step_ms"] / full,
                "launch_bound": rows[r]["host_ms"] >= 0.9 * rows[r]["step_ms"]} for r in all_rates]
        bench.rows = rows
        return {"model": name, "batch": bench.batch, "amp": "bf16", "rows": out,
                "ratio_0.2": rows[0.2]["step_ms"] / full, "target_0.2": 0.36,
                "target_met": rows[0.2]["step_ms"] / full <= 0.36, "ok": True}

    log.check(f"steps_{name}", table, ctx=ctx, min_seconds=5)
    if not bench.rows:
        return None

    def efficiency() -> dict:
        ideal = sum(bench.rows[r]["step_ms"] for r in plan) / (len(plan) * bench.rows[1.0]["step_ms"])
        times = {}
        for label, rates in (("schedule", plan), ("all_patches", [1.0] * run_steps)):
            sync(bench.device)
            start = time.perf_counter()
            for rate in rates:
                bench.step(rate)
            sync(bench.device)
            times[label] = time.perf_counter() - start
        measured = times["schedule"] / times["all_patches"]
        return {"model": name, "steps": run_steps, "schedule": "cosine 0.2->1, quantum 0.2",
                "ideal_ratio": ideal, "measured_ratio": measured, "efficiency": ideal / measured,
                "seconds_schedule": times["schedule"], "seconds_all_patches": times["all_patches"],
                "target": 0.95, "target_met": ideal / measured >= 0.95, "ok": True}

    full_s = bench.rows[1.0]["step_ms"] / 1e3
    log.check(f"efficiency_{name}", efficiency, ctx=ctx, min_seconds=1.8 * run_steps * full_s + 2)
    return bench


def speed_inference(ctx: Context, log: PartLog) -> None:
    import torch

    from vitpss.inference import throughput

    def measure() -> dict:
        bench = StepBench(ctx, "deit_base_patch16_224", 256)
        x = torch.randn(bench.batch, 3, *bench.model.patch_embed.img_size, device=bench.device)
        rates = (1.0, 0.5, 0.25)
        speed = throughput(bench.model, x, rates, repeats=2 if ctx.smoke else 5, amp_dtype=torch.bfloat16,
                           min_time=0.01 if ctx.smoke else 0.2)
        return {"model": "deit_base_patch16_224", "batch": bench.batch, "amp": "bf16",
                "images_per_s": {str(r): speed[r] for r in rates}, "speedup_0.5": speed[0.5] / speed[1.0],
                "speedup_0.25": speed[0.25] / speed[1.0], "target_0.5": 1.8,
                "target_met": speed[0.5] / speed[1.0] >= 1.8, "ok": True}

    log.check("inference_deit_base", measure, ctx=ctx, min_seconds=6)


def speed_larger_batch(ctx: Context, log: PartLog, benches: dict[str, StepBench]) -> None:
    """At the smallest rate, is the step launch-bound (the host issues it about as slowly as the GPU
    runs it)? A 2x batch: time per image."""
    for name, bench in benches.items():
        rows = bench.rows

        def larger_batch(name: str = name, bench: StepBench = bench, rows: dict = rows) -> dict:
            small = min(rows)
            double = StepBench(ctx, name, 2 * bench.batch)
            t = double.table((small,), warmup=1 if ctx.smoke else 3, steps=1 if ctx.smoke else 5, samples=2)[small]
            per_image = {"batch": rows[small]["step_ms"] / bench.batch, "batch_x2": t["step_ms"] / double.batch}
            return {"keep_rate": small, "launch_bound_at_batch": rows[small]["host_ms"] >= 0.9 * rows[small]["step_ms"],
                    "host_ms": rows[small]["host_ms"], "step_ms": rows[small]["step_ms"], "x2_step_ms": t["step_ms"],
                    "x2_host_ms": t["host_ms"], "ms_per_image": per_image, "ok": True}

        log.check(f"larger_batch_{name}", larger_batch, ctx=ctx, min_seconds=6)


def speed_cuda_graphs(ctx: Context, log: PartLog, benches: dict[str, StepBench]) -> None:
    """At the smallest rate, the step with CUDA graphs (``torch.compile(mode="reduce-overhead")``):
    what removes the launch overhead of small steps."""
    import torch

    for name, bench in benches.items():
        rows = bench.rows

        def cuda_graphs(bench: StepBench = bench, rows: dict = rows) -> dict:
            if not ctx.cuda:
                return {"skipped": SKIP_CUDA}
            small = min(rows)
            torch._dynamo.reset()
            bench.net = torch.compile(bench.model, mode="reduce-overhead", dynamic=False)
            bench.before_step = torch.compiler.cudagraph_mark_step_begin
            try:
                start = time.perf_counter()
                bench.timed(small, 3)  # compile, record, warm
                compile_s = time.perf_counter() - start
                t = bench.table((small,), warmup=2, steps=10, samples=3)[small]
            finally:
                bench.net, bench.before_step = bench.model, (lambda: None)
                torch._dynamo.reset()
            return {"keep_rate": small, "eager_step_ms": rows[small]["step_ms"], "graphs_step_ms": t["step_ms"],
                    "graphs_host_ms": t["host_ms"], "compile_and_record_s": compile_s,
                    "speedup": rows[small]["step_ms"] / t["step_ms"], "ok": True}

        log.check(f"cuda_graphs_{name}", cuda_graphs, ctx=ctx, min_seconds=40 if ctx.cuda else 0)


def speed_compiled(ctx: Context, log: PartLog, benches: dict[str, StepBench]) -> None:
    """Compiled step per keep rate (``dynamic=False``: one graph per rate), compile time apart, as
    many rates as the part's time allows: 1 and 0.2 first."""
    import torch

    for name, bench in list(benches.items())[:1 if ctx.smoke else None]:
        rows = bench.rows

        def compiled(bench: StepBench = bench, rows: dict = rows) -> dict:
            torch._dynamo.reset()
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 16)
            backend = "inductor" if ctx.cuda else "eager"
            bench.net = torch.compile(bench.model, dynamic=False, backend=backend)
            out, worst = {}, 20.0
            try:
                for rate in ((1.0,) if ctx.smoke else (1.0, 0.2, 0.5, 0.75, 0.35)):
                    if ctx.remaining() < 1.3 * worst + 3:
                        out[str(rate)] = {"skipped": "part time limit"}
                        continue
                    start = time.perf_counter()
                    bench.timed(rate, 1)
                    compile_s = time.perf_counter() - start
                    worst = max(worst if out else 0.0, compile_s)
                    t = bench.table((rate,), warmup=1, steps=1 if ctx.smoke else 5, samples=2 if ctx.smoke else 3)[rate]
                    out[str(rate)] = {"compile_s": compile_s, "step_ms": t["step_ms"], "host_ms": t["host_ms"],
                                      "eager_step_ms": rows[rate]["step_ms"]}
                    log.data["checks"].setdefault(f"compiled_{name}", {})["partial"] = out
                    log.write()
            finally:
                bench.net = bench.model
                torch._dynamo.reset()
            done = {r: v for r, v in out.items() if "step_ms" in v}
            result: dict[str, Any] = {"backend": backend, "rates": out, "ok": bool(done)}
            if "1.0" in done and "0.2" in done:
                result["ratio_0.2"] = done["0.2"]["step_ms"] / done["1.0"]["step_ms"]
            return result

        log.check(f"compiled_{name}", compiled, ctx=ctx, min_seconds=25 if ctx.cuda else 0)


def part_speed(ctx: Context) -> PartLog:
    log = PartLog(ctx, "speed")
    benches = {name: speed_model(ctx, log, name, batch) for name, batch in SPEED_MODELS}
    benches = {name: bench for name, bench in benches.items() if bench is not None}  # those with a step table
    speed_inference(ctx, log)
    speed_larger_batch(ctx, log, benches)
    speed_compiled(ctx, log, benches)
    speed_cuda_graphs(ctx, log, benches)
    return log


# --------------------------------------------------------------------------- evidence


EVIDENCE_MODEL = dict(model="vit_small_patch16_224", img_size=32, patch_size=4, embed_dim=384, depth=6, num_heads=6,
                      global_pool="avg", batch_size=512, lr=1e-3, augment="pad-crop", drop_path=0.0)
SMOKE_MODEL = dict(model="vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2,
                   global_pool="avg", batch_size=16, lr=1e-3, augment="pad-crop", drop_path=0.0, threads=1)


def evidence_config(ctx: Context, name: str, epochs: int, seed: int, **overrides: Any) -> Any:
    from vitpss.config import TrainConfig

    model = SMOKE_MODEL if ctx.smoke else EVIDENCE_MODEL
    # workers on a GPU machine: the batch crops run beside the main thread, which only launches the steps
    return TrainConfig(**model, data=str(ctx.data), in_memory="on", workers=0 if ctx.smoke else 6, epochs=epochs,
                       seed=seed, warmup_epochs=max(0.5, round(epochs / 20, 1)), device=ctx.device, quiet=True,
                       overwrite=True, output=str(ctx.work / f"evidence_{name}_s{seed}"), log_every=100, **overrides)


def evidence_run(ctx: Context, name: str, epochs: int, seed: int, **overrides: Any) -> dict:
    """One run: per-epoch acc1, training and wall time, then acc1 at inference keep rates 0.5 / 0.25."""
    from vitpss.engine import evaluate

    epochs_log: list[dict] = []

    def on_epoch(trainer: Any, epoch: int) -> None:
        record = trainer.state.last_val or {}
        epochs_log.append({"epoch": epoch + 1, "acc1": record.get("acc1"), "train_s": trainer.state.train_time_s,
                           "wall_s": time.perf_counter() - trainer.loop_start})

    cfg = evidence_config(ctx, name, epochs, seed, **overrides)
    trainer, summary = run_trainer(cfg, on_epoch)
    summary = summary or {}
    inference = {str(r): evaluate(trainer.model, trainer.val_loader, trainer.device, keep_rate=r,
                                  amp_dtype=trainer.amp_dtype)["acc1"] for r in (0.5, 0.25)}
    return {"schedule": cfg.schedule, "low": cfg.low, "sampler": cfg.sampler, "epochs": epochs, "seed": seed,
            "amp": trainer.cfg.amp, "final_acc1": epochs_log[-1]["acc1"] if epochs_log else None,
            "train_time_s": summary.get("train_time_s"),
            "wall_time_s": epochs_log[-1]["wall_s"] if epochs_log else None,
            "data_wait_share": summary.get("data_wait_share"),
            "time_vs_all_patches_steps": summary.get("time_vs_all_patches"),
            "acc1_at_inference_keep_rate": inference, "per_epoch": epochs_log}


def compare(baseline: dict, default: dict) -> dict:
    """The default against the baseline: acc1 gap, time ratios, time to reach the baseline's final acc1."""
    target = baseline["final_acc1"]
    reached = next((e for e in default["per_epoch"] if e["acc1"] is not None and e["acc1"] >= target), None)
    gap = default["final_acc1"] - target
    wall_ratio = default["wall_time_s"] / baseline["wall_time_s"]
    return {"acc1_gap": gap, "wall_ratio": wall_ratio,
            "train_ratio": default["train_time_s"] / baseline["train_time_s"],
            "default_reaches_baseline_final_acc1": None if reached is None else
            {"epoch": reached["epoch"], "train_s": reached["train_s"], "wall_s": reached["wall_s"]},
            "target": "gap >= -1.0 pt at wall ratio <= 0.70", "target_met": gap >= -1.0 and wall_ratio <= 0.70}


def part_evidence(ctx: Context, seconds: float) -> PartLog:
    """Calibrate the epochs on the all-patch run (one epoch), then baseline and default at equal epochs."""
    log = PartLog(ctx, "evidence")
    if not ctx.full_data and not ctx.smoke:
        log.data["skipped"] = "no CIFAR-10 copy (see docs/benchmarks.md, 'GPU run')"
        return log
    use_parallel_decode()
    log.data["model"] = SMOKE_MODEL if ctx.smoke else EVIDENCE_MODEL
    log.data["data"] = "generated (smoke)" if ctx.smoke else "CIFAR-10 (JPEG copy): 50,000 train, 10,000 test"
    plan: dict[str, Any] = {}

    def calibrate() -> dict:
        run = evidence_run(ctx, "calibration", 1, 0, schedule="none")
        epoch_s = run["per_epoch"][-1]["wall_s"]
        budget = ctx.remaining() - 10
        fits = int(budget / (1.75 * epoch_s))  # baseline + default (~0.7x) + evaluations
        epochs = 2 if ctx.smoke else max(1, min(int(seconds / epoch_s), fits, 100))
        plan.update(epochs=epochs, epoch_s=epoch_s)
        return {"one_epoch": run, "epoch_wall_s": epoch_s, "target_baseline_s": seconds, "epochs": epochs, "ok": True}

    log.check("calibration", calibrate)
    if "epochs" not in plan:
        return log
    results: dict[int, dict] = {}
    for seed in ((0,) if ctx.smoke else (0, 1)):  # a second seed only if the time is left
        if seed and ctx.remaining() < 1.9 * plan["epochs"] * plan["epoch_s"] + 10:
            break
        for name, flags in (("baseline", {"schedule": "none"}), ("default", {})):
            check = log.check(f"{name}_s{seed}", lambda: {**evidence_run(ctx, name, plan["epochs"], seed, **flags),
                                                          "ok": True})
            results.setdefault(seed, {})[name] = check
        pair = results[seed]
        if all(pair[n].get("ok") and pair[n].get("final_acc1") is not None for n in ("baseline", "default")):
            log.data["checks"][f"compare_s{seed}"] = compare(pair["baseline"], pair["default"])
            log.write()
    return log


# --------------------------------------------------------------------------- the parent: parts and report


PART_FUNCTIONS: dict[str, Callable[..., PartLog]] = {"correctness": part_correctness, "speed": part_speed,
                                                  "evidence": part_evidence}


def run_parts(names: list[str], args: argparse.Namespace, data: Path, full_data: bool, work: Path,
              limits: dict[str, float], log_file: Any) -> dict[str, dict]:
    """Parts in one process of their own (on a GPU one part per process; --smoke: all in one, to
    save interpreter starts), killed ``GRACE_S`` after their limits; each JSON gains the outcome."""
    limit = sum(limits[n] for n in names)
    cmd = [sys.executable, "-u", str(Path(__file__).resolve()), "--part", ",".join(names), "--out", str(args.out),
           "--data", str(data), "--work", str(work), "--limits", *(f"{n}={limits[n]}" for n in names),
           "--evidence-seconds", str(args.evidence_seconds)]
    cmd += ["--full-data"] if full_data else []
    cmd += ["--smoke"] if args.smoke else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    if args.smoke:
        env.setdefault("OMP_NUM_THREADS", "1")
    print(f"gpu_run: {', '.join(names)} (limit {limit:.0f} s) ...", flush=True)
    try:
        code: Any = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                   timeout=limit + GRACE_S).returncode
    except subprocess.TimeoutExpired:
        code = "killed at the time limit"
    results = {}
    for name in names:
        path = args.out / f"{name}.json"
        result = json.loads(path.read_text()) if path.exists() else {"part": name, "checks": {}, "finished": False}
        result.update(exit_code=code if code or result.get("finished") else "did not finish", limit_s=limits[name])
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"gpu_run: {name}: exit {result['exit_code']}, {result.get('seconds')} s", flush=True)
        results[name] = result
    return results


def targets(parts: dict[str, dict], total_s: float, smoke: bool) -> list[dict]:
    """The issue's targets, each met or not (None: not measured), with the number."""
    def check(part: str, name: str) -> dict:
        return parts.get(part, {}).get("checks", {}).get(name, {})

    rows = []
    sync = check("correctness", "sync_debug_default")
    rows.append({"target": "0 host syncs in 100 steps (sync debug mode)", "value": sync.get("armed_steps"),
                 "met": sync.get("ok")})
    for name, _ in SPEED_MODELS:
        eff = check("speed", f"efficiency_{name}")
        rows.append({"target": f"efficiency >= 0.95, {name}", "value": eff.get("efficiency"),
                     "met": eff.get("target_met")})
    steps_b = check("speed", "steps_deit_base_patch16_224")
    ratio = steps_b.get("ratio_0.2")
    rows.append({"target": "ViT-B step at 0.2 <= 0.36x step at 1 (eager)", "value": ratio,
                 "met": None if ratio is None else ratio <= 0.36})
    inf = check("speed", "inference_deit_base")
    rows.append({"target": "inference at 0.5 >= 1.8x images/s at 1", "value": inf.get("speedup_0.5"),
                 "met": inf.get("target_met")})
    cmp = check("evidence", "compare_s0")
    rows.append({"target": "CIFAR-10: default within 1.0 pt at <= 0.70x wall time",
                 "value": None if not cmp else f"{cmp['acc1_gap']:+.2f} pt, {cmp['wall_ratio']:.2f}x",
                 "met": cmp.get("target_met")})
    base = check("evidence", "baseline_s0")
    rows.append({"target": "CIFAR-10 all-patch baseline >= 80% acc1", "value": base.get("final_acc1"),
                 "met": None if base.get("final_acc1") is None else base["final_acc1"] >= 80})
    rows.append({"target": "whole script <= 7 minutes", "value": round(total_s), "met": total_s <= 420})
    if smoke:
        for row in rows:
            row["met"] = None  # toy sizes on a CPU: nothing is measured against the targets
    return rows


def print_table(env: dict, parts: dict[str, dict], rows: list[dict]) -> None:
    def show(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    print(f"\ngpu_run: {env.get('gpu', 'no GPU')}, torch {env['torch']}, timm {env['timm']}, "
          f"CUDA {env.get('cuda_build')}{' (SMOKE: toy sizes on CPU)' if env['smoke'] else ''}")
    for name, part in parts.items():
        checks = part.get("checks", {})
        state = ", ".join(f"{k}={'skip' if 'skipped' in c else c.get('ok')}" for k, c in checks.items())
        print(f"  {name:<12} exit {part.get('exit_code')}  {part.get('seconds')} s  {state}")
    print(f"  {'target':<58}{'value':>22}  met")
    for row in rows:
        print(f"  {row['target']:<58}{show(row['value']):>22}  {row['met']}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="cifar10-jpg.tar.gz or a folder with train/ and val/ "
                             "(default .gpu-data/cifar10-jpg.tar.gz)")
    parser.add_argument("--smoke", action="store_true", help="every part on CPU at toy sizes (under a minute)")
    parser.add_argument("--parts", nargs="+", choices=list(LIMITS), default=list(LIMITS), help="run only these parts")
    parser.add_argument("--limits", nargs="+", default=[], metavar="PART=SECONDS", help="override a part's limit")
    parser.add_argument("--evidence-seconds", type=float, default=100.0, help="target time of the all-patch run")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # inside a part's own process: comma-separated parts
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--full-data", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)

    limits = dict(LIMITS)
    for item in args.limits:
        part, _, seconds = item.partition("=")
        if part not in limits or not seconds.replace(".", "", 1).isdigit():
            print(f"gpu_run: --limits {item!r}: expected PART=SECONDS with PART one of {', '.join(limits)}")
            return 2
        limits[part] = float(seconds)
    if args.part:  # inside a part's process
        for name in args.part.split(","):
            ctx = Context(out=args.out, work=args.work / name, data=args.data, full_data=args.full_data,
                          smoke=args.smoke, deadline=time.time() + limits[name])
            ctx.work.mkdir(parents=True, exist_ok=True)
            log = part_evidence(ctx, args.evidence_seconds) if name == "evidence" else PART_FUNCTIONS[name](ctx)
            log.finish()
        return 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vitpss_gpu_run_") as tmp:
        work = Path(tmp)
        ctx = Context(out=args.out, work=work, data=work, full_data=False, smoke=args.smoke, deadline=math.inf)
        env = environment(ctx)
        env["seconds"] = round(time.perf_counter() - start, 1)
        (args.out / "environment.json").write_text(json.dumps(env, indent=1) + "\n")
        if env["problems"]:
            print(f"gpu_run: {env['problems'][0]}")
            return 1
        print(f"gpu_run: {env.get('gpu', 'CPU')}, torch {env['torch']}, timm {env['timm']}, CUDA {env['cuda_build']}",
              flush=True)
        data, full_data, data_info = prepare_data(args.data, work, args.smoke)
        env["data"] = data_info
        (args.out / "environment.json").write_text(json.dumps(env, indent=1) + "\n")
        if "problem" in data_info:
            print(f"gpu_run: {data_info['problem']}", flush=True)
        parts: dict[str, dict] = {}
        groups = [args.parts] if args.smoke else [[name] for name in args.parts]
        with open(args.out / "gpu_run.log", "a") as log_file:
            for names in groups:
                parts.update(run_parts(names, args, data, full_data, work, limits, log_file))
                log_file.flush()
    total = time.perf_counter() - start
    rows = targets(parts, total, args.smoke)
    summary = {"environment": env, "limits_s": limits, "total_s": round(total, 1), "targets": rows,
               "parts": {n: {"exit_code": p.get("exit_code"), "seconds": p.get("seconds"),
                             "checks": {k: ("skipped" if "skipped" in c else c.get("ok"))
                                        for k, c in p.get("checks", {}).items()}} for n, p in parts.items()}}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print_table(env, parts, rows)
    print(f"gpu_run: {total:.0f} s in all; wrote {args.out}")
    failed = [n for n, p in parts.items() if p.get("exit_code") != 0 or any(
        c.get("ok") is False for c in p.get("checks", {}).values())]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
