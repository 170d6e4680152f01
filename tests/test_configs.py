"""Every YAML recipe in configs/ loads into its job's config, and its model builds (on the meta device)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from vitpss.config import load_config, validate
from vitpss.commands.pretrain import config_from_args as pretrain_config
from vitpss.models import resolve_model_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))


def test_the_paper_recipes_are_all_there():
    names = {str(p.relative_to(CONFIG_DIR)) for p in CONFIGS}
    expected = {f"{d}/{n}.yaml" for d in ("deit-s-224", "deit-s-384") for n in ("baseline", "pss")}
    expected |= {"simmim-vit-b/baseline.yaml"}
    expected |= {f"simmim-vit-b/{s}_{k}.yaml" for s in ("random", "magnitude") for k in ("fixed_60", "linear", "cyclic")}
    expected |= {f"mnist5k/{n}.yaml" for n in ("pretrain", "finetune_baseline", "finetune_pss")}
    assert expected <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_loads_and_its_model_builds(path, capsys):
    if path.name.startswith("pretrain"):
        cfg, mask, _ = pretrain_config(argparse.Namespace(config=str(path)))
        assert 0 < mask.mask_ratio < 1
    else:
        cfg = validate(load_config(path))
    resolved = resolve_model_config(cfg)
    assert resolved.img_size % resolved.patch_size == 0
    assert capsys.readouterr().err == ""  # no ignored settings in a recipe


@pytest.mark.parametrize("baseline, name, schedule, extra", [
    ("mnist5k/patch4_baseline", "mnist5k/patch4_pss", "cosine", {"sampler"}),
    ("mnist5k/patch4_baseline", "mnist5k/patch4_pss_cyclic", "cyclic", {"cooldown_epochs", "sampler"}),
    ("cifar10/baseline", "cifar10/pss", "cosine", set()),
])
def test_pss_recipes_differ_from_their_baseline_only_in_the_schedule(baseline, name, schedule, extra):
    base = load_config(CONFIG_DIR / f"{baseline}.yaml")
    pss = load_config(CONFIG_DIR / f"{name}.yaml")
    differ = {name for name in vars(base) if getattr(base, name) != getattr(pss, name)}
    assert differ == {"schedule", "output"} | extra
    assert base.schedule == "none" and pss.schedule == schedule
