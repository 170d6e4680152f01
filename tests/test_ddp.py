"""Data-parallel training on 2 CPU processes (gloo): identical weights, same keep rates, own shards."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from train_helpers import tiny_run

from vitpss.checkpoint import read_jsonl
from vitpss.config import TrainConfig, validate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, accum_steps: int = 1) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from vitpss.trainer import Trainer

    cfg = validate(dataclasses.replace(
        TrainConfig(), data="synthetic", synthetic_size=32, in_chans=1, img_size=16, patch_size=4, embed_dim=32,
        depth=2, num_heads=2, batch_size=4, epochs=2, drop_path=0.1, output=os.path.join(out, "run"), quiet=True,
        workers=0, accum_steps=accum_steps))
    trainer = Trainer(cfg)
    trainer.open_logs(resuming=False)
    rates, write_log = [], trainer.write_log
    trainer.write_log = lambda: rates.extend(p.keep_rate for p in trainer.pending) or write_log()
    trainer.train_loader.sampler.set_epoch(0)
    shard = [i for i, _ in trainer.train_loader.sampler]
    trainer.run()
    trainer.close_logs()
    torch.save({"model": trainer.model.state_dict(), "rates": rates, "shard": shard}, os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("accum_steps", [1, 2])
def test_two_cpu_processes_keep_identical_weights(tmp_path, accum_steps):
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path), accum_steps), nprocs=2, join=True,
                       start_method="fork")
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(r0["model"][k], r1["model"][k]) for k in r0["model"])
    assert r0["rates"] == r1["rates"] and len(r0["rates"]) == 8 // accum_steps and len(set(r0["rates"])) > 1
    assert not set(r0["shard"]) & set(r1["shard"]) and len(r0["shard"]) == len(r1["shard"]) == 16
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2
    # The initial weights moved: training happened on both ranks together.
    val = read_jsonl(tmp_path / "run" / "val_log.jsonl")
    assert [v["epoch"] for v in val] == [1, 2]


def test_torchrun_launches_the_cli_data_parallel(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "vitpss", *tiny_run(out, epochs=1)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    assert [r["step"] for r in read_jsonl(out / "train_log.jsonl")] == [0, 1]  # 32 images / (2 x 8) per step
    assert proc.stdout.count("run directory:") == 1  # only rank 0 reports
