"""RNG states in checkpoints: restored exactly on the same kind of device, reseeded across kinds."""

import pytest
import torch

from vitpss.checkpoint import restore_generator, rng_state, set_rng_state


def cuda_generator_state(seed: int, offset: int = 0) -> torch.Tensor:
    """What ``torch.Generator('cuda').get_state()`` returns: Philox seed and offset, 16 bytes."""
    return torch.tensor([seed, offset], dtype=torch.int64).view(torch.uint8)


def test_generator_state_restores_exactly_on_the_same_device():
    generator = torch.Generator().manual_seed(3)
    torch.rand(5, generator=generator)
    state = rng_state(generator)
    expected = torch.rand(5, generator=generator)
    fresh = torch.Generator()
    set_rng_state(state, fresh)
    assert torch.equal(torch.rand(5, generator=fresh), expected)


def test_cuda_generator_state_reseeds_a_cpu_generator_reproducibly_with_a_warning():
    draws = []
    for seed in (11, 11, 12):
        generator = torch.Generator()
        with pytest.warns(RuntimeWarning, match="another device type"):
            assert restore_generator(generator, cuda_generator_state(seed)) is False
        draws.append(torch.rand(4, generator=generator))
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def test_checkpoint_rng_of_a_gpu_run_resumes_on_a_cpu_machine():
    state = rng_state(torch.Generator().manual_seed(0))
    state["generator"] = cuda_generator_state(7)
    state["cuda"] = [cuda_generator_state(1), cuda_generator_state(2)]  # saved on a 2-GPU machine
    generator = torch.Generator()
    with pytest.warns(RuntimeWarning):
        set_rng_state(state, generator)
    assert torch.equal(torch.get_rng_state(), state["torch"])
