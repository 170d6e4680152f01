"""Put patch sampling into stock timm models without forking them: the family-independent core.

:func:`attach` finds the model's family (:func:`register_family`; the families live in
``patching/vit.py`` and ``patching/relpos.py``) and installs a :class:`PatchSampler` whose keep
rate can be changed at any time. It adds no parameters or buffers, so ``state_dict`` keys are
unchanged and checkpoints stay plain timm checkpoints.

The rule for which rate applies:

* in ``model.train()`` mode the *training* rate set by :func:`set_keep_rate` is used;
* in ``model.eval()`` mode all patches are used, unless an inference rate was set, either by
  ``set_keep_rate(model, rate, inference=True)`` or inside ``with keep_rate(model, rate):``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from ..samplers import SAMPLERS, gather_tokens, get_sampler, inference_sampler, keep_count


class PatchSampler(nn.Module):
    """Keeps the prefix tokens and a sampled ``keep_rate`` share of the patch tokens.

    Input ``(B, N, D)`` with ``num_prefix_tokens`` leading class/register tokens; output
    ``(B, num_prefix_tokens + num_keep, D)``. At a rate of 1 the input is returned unchanged.
    The indices of the last sampling are kept in ``keep_indices`` (``None`` when all were kept)
    for models whose attention needs the kept positions, and for visualisation. ``num_patches``
    is the model's patch count at its configured image size, recorded by :func:`attach` for
    :func:`token_count` (``None`` if unknown).
    """

    def __init__(
        self,
        sampler: str = "magnitude",
        num_prefix_tokens: int = 1,
        generator: Optional[torch.Generator] = None,
        return_indices: bool = False,
        num_patches: Optional[int] = None,
    ) -> None:
        super().__init__()
        get_sampler(sampler)
        self.sampler = sampler
        self.num_prefix_tokens = num_prefix_tokens
        self.generator = generator
        self.return_indices = return_indices
        self.num_patches = num_patches
        self.train_keep_rate = 1.0
        self.inference_keep_rate: Optional[float] = None
        self.keep_indices: Optional[torch.Tensor] = None

    @property
    def active_keep_rate(self) -> float:
        if self.training:
            return self.train_keep_rate
        return 1.0 if self.inference_keep_rate is None else self.inference_keep_rate

    def forward(self, x: torch.Tensor):
        self.keep_indices = None
        rate = self.active_keep_rate
        num_patches = x.shape[1] - self.num_prefix_tokens
        if rate < 1.0 and num_patches > 0:
            num_keep = keep_count(rate, num_patches)
            if num_keep < num_patches:
                # random-in-training samplers (gumbel-magnitude) pick deterministically in eval mode
                fn = get_sampler(self.sampler if self.training else inference_sampler(self.sampler))
                self.keep_indices = fn(x, self.num_prefix_tokens, num_keep, self.generator)
                x = gather_tokens(x, self.num_prefix_tokens, self.keep_indices)
        return (x, self.keep_indices) if self.return_indices else x

    def extra_repr(self) -> str:
        return (f"sampler={self.sampler!r}, num_prefix_tokens={self.num_prefix_tokens}, "
                f"num_patches={self.num_patches}, train_keep_rate={self.train_keep_rate}, "
                f"inference_keep_rate={self.inference_keep_rate}")


# Model families: (predicate, installer). An installer puts a PatchSampler into the model.
Installer = Callable[[nn.Module, str, Optional[torch.Generator]], None]
_FAMILIES: list[tuple[str, Callable[[nn.Module], bool], Installer]] = []


def register_family(name: str, predicate: Callable[[nn.Module], bool], installer: Installer) -> None:
    """Teach :func:`attach` a model family: ``predicate(model)`` selects, ``installer`` patches."""
    _FAMILIES.append((name, predicate, installer))


def supported_families() -> list[str]:
    return [name for name, _, _ in _FAMILIES]


def attach(model: nn.Module, sampler: str = "random", generator: Optional[torch.Generator] = None) -> nn.Module:
    """Install patch sampling into a timm model in place and return it.

    ``sampler`` is a name from :data:`vitpss.samplers.SAMPLERS` (default ``random``, as ``vitpss
    train``: the published ``magnitude`` lost 1.7-5 points on natural images, docs/benchmarks.md);
    ``generator`` seeds the random samplers. Calling it again replaces the sampler. Raises
    ``TypeError`` for unsupported models.
    """
    get_sampler(sampler)
    for _, predicate, installer in _FAMILIES:
        if predicate(model):
            installer(model, sampler, generator)
            return model
    raise TypeError(
        f"vitpss.attach does not support {type(model).__name__}: supported families are "
        f"{'; '.join(supported_families())}"
    )


def patch_samplers(model: nn.Module) -> list[PatchSampler]:
    """All :class:`PatchSampler` modules in ``model`` (also inside DDP or torch.compile wrappers)."""
    return [m for m in model.modules() if isinstance(m, PatchSampler)]


def _samplers_or_raise(model: nn.Module) -> list[PatchSampler]:
    found = patch_samplers(model)
    if not found:
        raise TypeError(f"{type(model).__name__} has no patch sampler: call vitpss.attach(model) first")
    return found


def check_keep_rate(rate: float) -> float:
    """``rate`` as a float; ValueError unless it is in (0, 1]."""
    rate = float(rate)
    if not 0 < rate <= 1:
        raise ValueError(f"keep_rate={rate!r} is out of range: keep_rate must be in (0, 1]")
    return rate


def set_keep_rate(model: nn.Module, rate: float, inference: bool = False) -> None:
    """Set the training keep rate (or, with ``inference=True``, the rate used in eval mode)."""
    rate = check_keep_rate(rate)
    for module in _samplers_or_raise(model):
        if inference:
            module.inference_keep_rate = rate
        else:
            module.train_keep_rate = rate


def set_sampler(model: nn.Module, sampler: str) -> None:
    """Switch the sampler of an attached model (e.g. to sweep ``random`` vs ``magnitude``)."""
    get_sampler(sampler)
    for module in _samplers_or_raise(model):
        module.sampler = sampler


def get_keep_indices(model: nn.Module) -> Optional[torch.Tensor]:
    """Patch indices kept by the last forward, ``(B, num_keep)``, or ``None`` if all were kept."""
    return _samplers_or_raise(model)[0].keep_indices


@contextlib.contextmanager
def keep_rate(model: nn.Module, rate: float) -> Iterator[nn.Module]:
    """Run ``model`` at ``rate`` inside the block, in train and eval mode alike; restores after."""
    rate = check_keep_rate(rate)
    modules = _samplers_or_raise(model)
    saved = [(m.train_keep_rate, m.inference_keep_rate) for m in modules]
    for m in modules:
        m.train_keep_rate = m.inference_keep_rate = rate
    try:
        yield model
    finally:
        for m, (train_rate, inference_rate) in zip(modules, saved):
            m.train_keep_rate, m.inference_keep_rate = train_rate, inference_rate


def num_patches(model: nn.Module) -> int:
    """Patches per image at the model's configured image size, as its family told :func:`attach`."""
    sampler = _samplers_or_raise(model)[0]
    if sampler.num_patches is None:
        raise TypeError(f"the patch sampler of {type(model).__name__} does not know the number of patches: its "
                        f"family's installer must pass num_patches= to PatchSampler")
    return sampler.num_patches


def token_count(model: nn.Module, rate: float) -> int:
    """Tokens per image that reach the first block at keep ``rate`` (prefix tokens included).

    Counted for the model's configured image size; works before any forward.
    """
    sampler = _samplers_or_raise(model)[0]
    return sampler.num_prefix_tokens + keep_count(check_keep_rate(rate), num_patches(model))


def check_full_grid(module: nn.Module, what: str, way_out: str) -> None:
    """ValueError if ``module`` drops patches although ``what`` folds its tokens back into the patch grid."""
    rate = min((s.active_keep_rate for s in patch_samplers(module)), default=1.0)
    if rate < 1.0:
        raise ValueError(f"{what} reshapes the tokens into the patch grid, so it needs all patches but runs "
                         f"at keep rate {rate}: {way_out}")


def _forward_intermediates_checked(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The class's ``forward_intermediates``, refusing a grid (NCHW) output when patches are dropped."""
    stock = type(module).forward_intermediates
    call = inspect.signature(stock).bind(module, *args, **kwargs)
    call.apply_defaults()
    if call.arguments.get("output_fmt") == "NCHW":
        check_full_grid(module, "forward_intermediates(output_fmt='NCHW')",
                        "pass output_fmt='NLC' or use vitpss.keep_rate(model, 1.0)")
    return stock(module, *args, **kwargs)


def guard_grid_intermediates(module: nn.Module) -> None:
    """Make ``module.forward_intermediates`` raise ValueError for a grid output below keep rate 1.

    timm-style ``forward_intermediates(output_fmt="NCHW")`` reshapes the patch tokens into the
    grid; with fewer tokens that fails or, when the numbers happen to divide, returns a tensor of
    the wrong shape. NLC output and keep rate 1 run the stock method unchanged.
    """
    # a partial, not a bound method, so that the model still pickles
    module.forward_intermediates = functools.partial(_forward_intermediates_checked, module)


__all__ = [
    "PatchSampler", "attach", "set_keep_rate", "set_sampler", "keep_rate", "get_keep_indices",
    "patch_samplers", "register_family", "supported_families", "token_count", "num_patches", "SAMPLERS",
]
