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
import numbers
import inspect
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from ..samplers import NOISE_SAMPLERS, SAMPLERS, gather_tokens, get_sampler, inference_sampler, keep_count, patch_noise


class PatchSampler(nn.Module):
    """Keeps the prefix tokens and a sampled ``keep_rate`` share of the patch tokens.

    Input ``(B, N, D)`` with ``num_prefix_tokens`` leading class/register tokens; output
    ``(B, num_prefix_tokens + num_keep, D)``. At a rate of 1 the input is returned unchanged.
    The indices of the last sampling are kept in ``keep_indices`` (``None`` when all were kept)
    for models whose attention needs the kept positions, and for visualisation. ``num_patches``
    is the model's patch count at its configured image size, recorded by :func:`attach` for
    :func:`token_count` (``None`` if unknown).

    The random samplers draw their noise from ``generator`` in the forward, unless
    :meth:`draw_noise` drew it before the call: every family does that in a forward pre-hook on
    the model given to :func:`attach` (timm: ``draw_patch_noise``; HF and open_clip:
    :func:`draw_noise_ahead`), so that ``torch.compile(model)`` traces the forward without a graph break
    (dynamo cannot trace a draw from a ``torch.Generator``; the pre-hooks of the module given to
    ``torch.compile`` run outside the compiled code). Same generator, same draws, either way.
    """

    def __init__(
        self,
        sampler: str = "random",
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
        self.noise: Optional[torch.Tensor] = None  # drawn by draw_noise() for the next forward only

    @property
    def active_keep_rate(self) -> float:
        if self.training:
            return self.train_keep_rate
        return 1.0 if self.inference_keep_rate is None else self.inference_keep_rate

    def _sampling(self, num_patches: int) -> Optional[tuple[str, int]]:
        """``(sampler name, num_keep)`` the next forward over ``num_patches`` patch tokens uses,
        or ``None`` when it keeps them all."""
        rate = self.active_keep_rate
        if rate >= 1.0 or num_patches <= 0:
            return None
        num_keep = keep_count(rate, num_patches)
        if num_keep == num_patches:
            return None
        # random-in-training samplers (gumbel-magnitude) pick deterministically in eval mode
        return (self.sampler if self.training else inference_sampler(self.sampler)), num_keep

    def needs_noise(self, num_patches: int) -> bool:
        """Whether the next forward over ``num_patches`` patch tokens draws noise from ``generator``."""
        plan = self._sampling(num_patches)
        return self.generator is not None and plan is not None and plan[0] in NOISE_SAMPLERS

    def draw_noise(self, batch_size: int, num_patches: int, device: torch.device) -> None:
        """Draw the noise of the next forward now, from ``generator``, if that forward needs any.

        Call it outside a compiled region, right before the model's forward (nothing else may draw
        from ``generator`` in between, or the draws change). Without a generator the samplers draw
        from torch's global RNG, which dynamo traces, and nothing is drawn here.
        """
        needs_noise = self.needs_noise(num_patches)
        self.noise = patch_noise(batch_size, num_patches, device, self.generator) if needs_noise else None

    def forward(self, x: torch.Tensor):
        noise, self.noise, self.keep_indices = self.noise, None, None
        num_patches = x.shape[1] - self.num_prefix_tokens
        plan = self._sampling(num_patches)
        if plan is not None:
            name, num_keep = plan
            if noise is not None and name in NOISE_SAMPLERS and tuple(noise.shape) == (x.shape[0], num_patches):
                self.keep_indices = get_sampler(name)(x, self.num_prefix_tokens, num_keep, noise=noise)
            else:  # nothing drawn ahead, or drawn for other tokens (a forward that did not reach here)
                self.keep_indices = get_sampler(name)(x, self.num_prefix_tokens, num_keep, self.generator)
            x = gather_tokens(x, self.num_prefix_tokens, self.keep_indices)
        return (x, self.keep_indices) if self.return_indices else x

    def _replicate_for_data_parallel(self) -> "PatchSampler":
        # nn.DataParallel copies modules per GPU and runs them in threads: the noise drawn ahead, the
        # kept indices and the generator's draw order would not be per replica
        raise RuntimeError("vitpss patch sampling does not support nn.DataParallel: run one process per GPU with "
                           "torchrun (DistributedDataParallel), or make one GPU visible (CUDA_VISIBLE_DEVICES=0)")

    def extra_repr(self) -> str:
        return (f"sampler={self.sampler!r}, num_prefix_tokens={self.num_prefix_tokens}, "
                f"num_patches={self.num_patches}, train_keep_rate={self.train_keep_rate}, "
                f"inference_keep_rate={self.inference_keep_rate}")


# Model families: (predicate, installer). An installer puts a PatchSampler into the model.
Installer = Callable[[nn.Module, str, Optional[torch.Generator]], None]
_FAMILIES: list[tuple[str, Callable[[nn.Module], bool], Installer, int]] = []  # in registration order


def register_family(name: str, predicate: Callable[[nn.Module], bool], installer: Installer,
                    priority: int = 0) -> None:
    """Teach :func:`attach` a model family: ``predicate(model)`` selects, ``installer`` patches.

    :func:`attach` tries the families by decreasing ``priority`` and, among equal priorities, the
    latest registered first: a family registered for a subclass of a supported model (the built-in
    families have priority 0) takes precedence over the built-in one.
    """
    _FAMILIES.append((name, predicate, installer, priority))


def _families_in_dispatch_order() -> list[tuple[str, Callable[[nn.Module], bool], Installer, int]]:
    order = sorted(range(len(_FAMILIES)), key=lambda i: (-_FAMILIES[i][3], -i))
    return [_FAMILIES[i] for i in order]


def supported_families() -> list[str]:
    return [name for name, _, _, _ in _FAMILIES]


def attach(model: nn.Module, sampler: str = "random", generator: Optional[torch.Generator] = None) -> nn.Module:
    """Install patch sampling into a timm model in place and return it.

    ``sampler`` is a name from :data:`vitpss.samplers.SAMPLERS` (default ``random``, as ``vitpss
    train``: the published ``magnitude`` lost 1.7-5 points on natural images, docs/benchmarks.md);
    ``generator`` seeds the random samplers. Calling it again replaces the sampler. Raises
    ``TypeError`` for unsupported models.
    """
    get_sampler(sampler)
    for _, predicate, installer, _ in _families_in_dispatch_order():
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
    """``rate`` as a float; TypeError unless it is a real number, ValueError unless it is in (0, 1]."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise TypeError(f"keep_rate={rate!r} is not a number: give a float in (0, 1], e.g. 0.5")
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
    """Patch indices kept by the last forward, ``(B, num_keep)``; ``None`` when nothing was dropped.

    ``None`` before the first forward and after a forward that kept every patch: keep rate 1, a
    rate whose keep count rounds to all patches, or eval mode without an inference keep rate.
    As timm's ``PatchDropout`` (``keep_indices is None`` = no gather), so no index tensor is built
    for the all-patch steps; where all indices are wanted, use
    ``torch.arange(num_patches).expand(B, -1)`` on ``None``.
    """
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


@torch.compiler.disable  # runs as plain Python: a traced draw from a generator would split the graph anyway
def _draw_noise_untraced(sampler: PatchSampler, batch_size: int, num_patches: int, device: torch.device) -> None:
    sampler.noise = patch_noise(batch_size, num_patches, device, sampler.generator)


def draw_noise_eagerly(sampler: PatchSampler, batch_size: int, num_patches: int, device: torch.device) -> None:
    """The noise of ``sampler``'s next forward, which needs it (:meth:`PatchSampler.needs_noise`), drawn
    now; hidden from dynamo when traced (the disabling costs ~10 us per call, so only then)."""
    if torch.compiler.is_compiling():
        _draw_noise_untraced(sampler, batch_size, num_patches, device)
    else:
        sampler.noise = patch_noise(batch_size, num_patches, device, sampler.generator)


def draw_noise_ahead(model: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook (``with_kwargs=True``) that draws the noise of the samplers deep inside ``model``.

    ``model.patch_noise_plan`` lists ``(sampler, (patch_h, patch_w), image_argument)``; the images
    are the first positional argument or the named one. Hooks of the module given to
    ``torch.compile`` run outside the compiled code, so the draw from the generator does not split
    the graph; inside a compiled wrapper only the draw itself is hidden from dynamo. Images of
    another size than the plan assumes are left to the sampler's own draw.
    """
    for sampler, (patch_h, patch_w), name in model.patch_noise_plan:
        images = kwargs.get(name, args[0] if args else None)
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            num_patches = (images.shape[-2] // patch_h) * (images.shape[-1] // patch_w)
            if sampler.needs_noise(num_patches):
                draw_noise_eagerly(sampler, images.shape[0], num_patches, images.device)


def skip_as_compiled_frame(hook: Callable[..., None]) -> None:
    """Make dynamo run ``hook`` as plain Python when it is called outside traced code.

    The pre-hooks of the module given to ``torch.compile`` run outside the compiled graph, but
    dynamo would still compile their own frame (no tensor work, guarded on the keep rate: one
    frame per rate for nothing). Inside a compiled wrapper the hook is traced: a forward that
    draws nothing has no graph break. A torch without this private API compiles the hook's frames.
    """
    eval_frame = torch._dynamo.eval_frame
    try:  # skip the hook's frame and the frames it calls
        skip = eval_frame.FrameExecStrategy(eval_frame.FrameAction.SKIP, eval_frame.FrameAction.SKIP)
        eval_frame.set_code_exec_strategy(hook.__code__, skip)
    except AttributeError:
        pass


def plan_noise_ahead(model: nn.Module, plan: list[tuple[PatchSampler, tuple[int, int], str]]) -> None:
    """Make ``model`` draw the noise of ``plan``'s samplers before its forward (:func:`draw_noise_ahead`)."""
    model.patch_noise_plan = plan
    if draw_noise_ahead not in model._forward_pre_hooks.values():
        model.register_forward_pre_hook(draw_noise_ahead, with_kwargs=True)


skip_as_compiled_frame(draw_noise_ahead)


def check_full_grid(module: nn.Module, what: str, way_out: str) -> None:
    """ValueError if ``module`` drops patches although ``what`` folds its tokens back into the patch grid."""
    rate = min((s.active_keep_rate for s in patch_samplers(module)), default=1.0)
    if rate < 1.0:
        raise ValueError(f"{what} reshapes the tokens into the patch grid, so it needs all patches but runs "
                         f"at keep rate {rate}: {way_out}")


class Patched:
    """Base of the mixins that :func:`patch_class` puts in front of a module's own class.

    The one way vitpss changes a method of a model: the module's class is swapped for a subclass
    ``(Mixin, OwnClass)`` built once per pair (as ``torch.nn.utils.parametrize`` does), so the
    instance holds no bound method or partial of itself. The model then pickles (``torch.save``,
    ``mp.spawn``, ``ddp_spawn``) and deep-copies, and ``del model`` frees it without the cyclic
    garbage collector. A user subclass keeps its own overrides below the mixin's.
    """

    def __reduce_ex__(self, protocol: Any) -> Any:
        # the built class is not importable by name: pickle its mixins and own class instead
        reduced = super().__reduce_ex__(protocol)
        cls = type(self)
        return (_new_patched, (cls._patch_mixins, cls._patch_base)) + tuple(reduced[2:])


_PATCHED_CLASSES: dict[tuple[tuple[type, ...], type], type] = {}


def patched_class(mixins: tuple[type, ...], base: type) -> type:
    """The class ``(*mixins, base)`` that :func:`patch_class` gives a ``base`` instance (built once)."""
    cls = _PATCHED_CLASSES.get((mixins, base))
    if cls is None:
        namespace = {"__module__": base.__module__, "__qualname__": base.__qualname__,
                     "_patch_mixins": mixins, "_patch_base": base}
        cls = _PATCHED_CLASSES[mixins, base] = type(base.__name__, (*mixins, base), namespace)
    return cls


def _new_patched(mixins: tuple[type, ...], base: type) -> Any:
    """Unpickling: an empty instance of the patched class; pickle then restores its ``__dict__``."""
    return object.__new__(patched_class(mixins, base))


def patch_class(module: nn.Module, mixin: type) -> None:
    """Give ``module`` the methods of ``mixin`` (a :class:`Patched` subclass) in place; no-op if it has them."""
    if isinstance(module, mixin):
        return
    cls = type(module)
    mixins, base = cls.__dict__.get("_patch_mixins", ()), cls.__dict__.get("_patch_base", cls)
    module.__class__ = patched_class((mixin, *mixins), base)


class GuardGridIntermediates(Patched):
    """``forward_intermediates`` that raises ValueError for a grid (NCHW) output below keep rate 1.

    timm-style ``forward_intermediates(output_fmt="NCHW")`` reshapes the patch tokens into the
    grid; with fewer tokens that fails or, when the numbers happen to divide, returns a tensor of
    the wrong shape. NLC output and keep rate 1 run the stock method unchanged.
    """

    def forward_intermediates(self, *args: Any, **kwargs: Any) -> Any:
        stock = super().forward_intermediates  # type: ignore[misc]
        call = inspect.signature(stock).bind(*args, **kwargs)
        call.apply_defaults()
        if call.arguments.get("output_fmt") == "NCHW":
            check_full_grid(self, "forward_intermediates(output_fmt='NCHW')",  # type: ignore[arg-type]
                            "pass output_fmt='NLC' or use vitpss.keep_rate(model, 1.0)")
        return stock(*args, **kwargs)


def guard_grid_intermediates(module: nn.Module) -> None:
    """Make ``module.forward_intermediates`` refuse a grid output below keep rate 1
    (:class:`GuardGridIntermediates`); modules without the method are left alone."""
    if callable(getattr(type(module), "forward_intermediates", None)):
        patch_class(module, GuardGridIntermediates)


__all__ = [
    "PatchSampler", "attach", "set_keep_rate", "set_sampler", "keep_rate", "get_keep_indices",
    "patch_samplers", "register_family", "supported_families", "token_count", "num_patches", "SAMPLERS",
]
