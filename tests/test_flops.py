"""FLOP counting at keep rates and the compute fraction of schedules."""

import pytest
import timm
import torch

import vitpss
from vitpss.flops import FlopModel, count_flops


def tiny():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=32, depth=2,
                              num_heads=2, num_classes=5)
    return vitpss.attach(model)


def test_deit_small_forward_flops_match_the_published_count():
    # docs/method.md §9.5: 4.608 GFLOPs as fvcore counts them (one multiply-add = one flop)
    model = vitpss.attach(timm.create_model("deit_small_patch16_224"))
    assert count_flops(model, 1.0, backward=False) / 2 / 1e9 == pytest.approx(4.608, rel=0.01)


def test_flops_fall_with_the_keep_rate_and_backward_costs_about_twice_forward():
    model = tiny()
    forward = [count_flops(model, r, backward=False) for r in (1.0, 0.6, 0.2)]
    assert forward[0] > forward[1] > forward[2]
    assert count_flops(model, 1.0) == pytest.approx(3 * forward[0], rel=0.05)


def test_counting_leaves_gradients_and_mode_untouched():
    model = tiny().eval()
    count_flops(model, 0.5)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("rate", [0.9, 0.7, 0.45, 0.3, 0.1])
def test_quadratic_flop_model_matches_direct_counts(rate):
    model = tiny()
    assert FlopModel(model).flops(rate) == pytest.approx(count_flops(model, rate), rel=1e-6)


def test_compute_fraction_of_all_patches_is_one_and_of_a_schedule_is_below_its_mean_rate_plus_overhead():
    model = tiny()
    flop_model = FlopModel(model)
    assert flop_model.compute_fraction([1.0] * 5) == pytest.approx(1.0)
    schedule = vitpss.build_schedule("cyclic", steps_per_epoch=50, epochs=2)
    fraction = flop_model.compute_fraction(schedule.rates())
    expected = sum(flop_model.flops(r) for r in schedule.rates()) / (schedule.total_steps * flop_model.flops(1.0))
    assert fraction == pytest.approx(expected)
    assert 0.4 < fraction < 0.75


def test_time_vs_all_patches_weights_each_rate_median_by_its_steps():
    from vitpss.timing import time_vs_all_patches

    records = [{"keep_rate": 1.0, "step_time": 0.10}] * 10 + [{"keep_rate": 0.2, "step_time": 0.02}] * 30
    records += [{"keep_rate": 1.0, "step_time": 5.0}]  # one step slowed by other load: medians ignore it
    result = time_vs_all_patches(records)
    assert result["full_steps"] == 11 and result["full_step_time_s"] == 0.10
    assert abs(result["time_vs_all_patches"] - (11 * 0.10 + 30 * 0.02) / (41 * 0.10)) < 1e-9
    assert time_vs_all_patches(records[:3] + records[10:]) == {}  # too few steps at keep rate 1
    assert time_vs_all_patches(records[:10]) == {}  # all patches throughout: nothing to compare
