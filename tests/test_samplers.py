"""Samplers: keep counts, index validity, prefix handling, magnitude = top-k by L1 norm."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitpss.samplers import (NOISE_SAMPLERS, SAMPLERS, gather_tokens, get_sampler, keep_count, magnitude_indices,
                             patch_noise, random_indices)


@settings(max_examples=300, deadline=None)
@given(st.floats(1e-6, 1.0), st.integers(1, 600))
def test_keep_count_is_rounded_share_of_patches_at_least_one(rate, num_patches):
    n = keep_count(rate, num_patches)
    assert 1 <= n <= num_patches
    assert n == max(1, int(rate * num_patches + 0.5 + 1e-9))


@pytest.mark.parametrize("rate,expected", [(1.0, 196), (0.9, 176), (0.8, 157), (0.6, 118), (0.5, 98), (0.2, 39)])
def test_keep_count_for_224px_patch16(rate, expected):
    assert keep_count(rate, 196) == expected


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.01])
def test_keep_count_rejects_rates_outside_unit_interval(rate):
    with pytest.raises(ValueError, match="keep_rate"):
        keep_count(rate, 10)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(SAMPLERS)), st.integers(1, 4), st.integers(0, 5), st.integers(1, 50), st.data())
def test_indices_are_unique_sorted_and_in_range(name, batch, prefix, num_patches, data):
    num_keep = data.draw(st.integers(1, num_patches))
    x = torch.randn(batch, prefix + num_patches, 8)
    idx = get_sampler(name)(x, prefix, num_keep, None)
    assert idx.shape == (batch, num_keep) and idx.dtype == torch.long
    assert idx.min() >= 0 and idx.max() < num_patches
    assert torch.all(idx[:, 1:] > idx[:, :-1])  # sorted and unique


def test_magnitude_keeps_the_top_k_tokens_by_l1_norm_ignoring_prefix():
    torch.manual_seed(0)
    x = torch.randn(3, 1 + 20, 16)
    x[:, 0] = 100.0  # a huge class token must not be scored
    idx = magnitude_indices(x, 1, 5)
    expected = x[:, 1:].abs().sum(-1).topk(5, dim=1).indices.sort(dim=1).values
    assert torch.equal(idx, expected)


def test_random_sampler_is_reproducible_with_a_generator_and_varies_per_sample():
    x = torch.randn(4, 50, 8)
    a = random_indices(x, 0, 10, torch.Generator().manual_seed(3))
    b = random_indices(x, 0, 10, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert len({tuple(row.tolist()) for row in a}) > 1


def test_random_sampler_is_uniform_over_positions():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(2000, 10, 4)
    counts = torch.bincount(random_indices(x, 0, 3, g).flatten(), minlength=10).float()
    assert torch.allclose(counts / counts.sum(), torch.full((10,), 0.1), atol=0.01)


def test_gather_tokens_puts_prefix_first_then_kept_patches():
    x = torch.arange(2 * 6 * 1, dtype=torch.float32).view(2, 6, 1)
    out = gather_tokens(x, 2, torch.tensor([[0, 3], [1, 2]]))
    assert out[:, :, 0].tolist() == [[0, 1, 2, 5], [6, 7, 9, 10]]


def test_unknown_sampler_lists_valid_names():
    with pytest.raises(ValueError, match="random"):
        get_sampler("gate")


def test_gumbel_magnitude_prefers_large_norm_patches_but_keeps_others_sometimes():
    g = torch.Generator().manual_seed(0)
    x = torch.ones(4000, 10, 4)
    x[:, :5] *= 3.0  # patches 0-4 have the larger norm
    counts = torch.bincount(get_sampler("gumbel-magnitude")(x, 0, 3, g).flatten(), minlength=10).float()
    assert counts[:5].sum() > 2 * counts[5:].sum()
    assert torch.all(counts[5:] > 0)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_draws_only_from_the_generator_it_is_given(name):
    x = torch.randn(4, 17, 8, generator=torch.Generator().manual_seed(0))
    global_state = torch.get_rng_state()
    first = get_sampler(name)(x, 1, 5, torch.Generator().manual_seed(7))
    second = get_sampler(name)(x, 1, 5, torch.Generator().manual_seed(7))
    assert torch.equal(first, second)
    assert torch.equal(torch.get_rng_state(), global_state)


@pytest.mark.parametrize("name", sorted(NOISE_SAMPLERS))
def test_random_samplers_given_patch_noise_pick_what_they_pick_when_drawing_it(name):
    x = torch.randn(4, 17, 8, generator=torch.Generator().manual_seed(0))
    drawn = get_sampler(name)(x, 1, 5, torch.Generator().manual_seed(7))
    noise = patch_noise(4, 16, x.device, torch.Generator().manual_seed(7))
    assert torch.equal(get_sampler(name)(x, 1, 5, noise=noise), drawn)


@pytest.mark.parametrize("name", sorted(NOISE_SAMPLERS))
def test_random_samplers_reject_noise_of_another_shape(name):
    x = torch.randn(4, 17, 8)
    with pytest.raises(ValueError, match=r"noise has shape \(4, 17\) but the tokens need \(4, 16\)"):
        get_sampler(name)(x, 1, 5, noise=torch.rand(4, 17))
