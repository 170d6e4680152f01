"""torch.compile with patch sampling: one graph per grid keep rate, and the same numbers as eager.

The random samplers draw from a ``torch.Generator``, which dynamo cannot trace; their noise is
drawn by a forward pre-hook outside the compiled code, so they compile as ``magnitude`` does.
Dynamo guards on the sampler's keep rate, so with ``dynamic=False`` (what ``vitpss train --compile``
uses) every distinct rate is one specialised graph. On the quantum grid the number of graphs is
bounded by the number of grid rates; revisiting a rate reuses its graph. ``--quantum 0`` makes
every new rate a new compilation. (Under torch's default automatic-dynamic setting the count
depends on the backend: we saw 3 graphs for 5 rates with ``eager``, and 5 with ``inductor``,
each traced symbolically first and then specialised again; see docs/cli.md "torch.compile".)
"""

import copy
import json

import pytest
import timm
import torch
from torch._dynamo.utils import counters

import vitpss
from vitpss.cli import main
from vitpss.runtime import MAX_COMPILED_RATES, compile_for_schedule

from train_helpers import tiny_run


def tiny_model(sampler: str = "magnitude") -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=32, depth=2,
                              num_heads=2, num_classes=10)
    return vitpss.attach(model, sampler=sampler, generator=torch.Generator().manual_seed(1))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 10, (4,), generator=gen)


def train_step(net: torch.nn.Module, model: torch.nn.Module, rate: float) -> torch.Tensor:
    x, y = batch()
    vitpss.set_keep_rate(model, rate)
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    return loss.detach()


@pytest.fixture
def fresh_dynamo():
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()
    torch._dynamo.config.recompile_limit = limit


@pytest.mark.parametrize("sampler", sorted(vitpss.SAMPLERS))
def test_static_compile_compiles_once_per_grid_rate_of_a_cyclic_schedule_and_matches_eager(fresh_dynamo, sampler):
    schedule = vitpss.build_schedule("cyclic", low=0.2, high=1.0, quantum=0.2, steps_per_epoch=10, epochs=2)
    eager = tiny_model(sampler).train()
    model = tiny_model(sampler).train()  # same weights, generator seed and draws
    net = torch.compile(model, backend="eager", dynamic=False)  # dynamo alone decides the graphs
    for step in range(schedule.total_steps):  # every rate is visited in both epochs
        expected, got = train_step(eager, eager, schedule(step)), train_step(net, model, schedule(step))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert len(schedule.levels()) == 5
    assert fresh_dynamo["stats"]["unique_graphs"] == 5
    assert fresh_dynamo["frames"]["ok"] == 5
    assert not fresh_dynamo["graph_break"]


@pytest.mark.slow
def test_inductor_compiled_steps_match_eager_and_reuse_graphs(fresh_dynamo):
    eager = tiny_model("random").train()  # deepcopy: same weights and generator state
    model = copy.deepcopy(eager)
    net = torch.compile(model, dynamic=False)
    for rate in (1.0, 0.4, 1.0, 0.4):
        expected, got = train_step(eager, eager, rate), train_step(net, model, rate)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)
    assert fresh_dynamo["stats"]["unique_graphs"] == 2


def test_compile_for_schedule_gives_every_rate_of_a_fine_grid_its_graph(fresh_dynamo):
    # quantum 0.1: 10 rates, more than torch's default recompile limit of 8
    schedule = vitpss.build_schedule("linear", low=0.1, high=1.0, quantum=0.1, steps_per_epoch=10, epochs=1)
    model = tiny_model().train()
    net = compile_for_schedule(model, schedule, backend="eager")
    for step in range(schedule.total_steps):
        train_step(net, model, schedule(step))
    assert len(schedule.levels()) == 10 > 8
    assert fresh_dynamo["stats"]["unique_graphs"] == 10


def test_compile_for_schedule_warns_when_quantum_0_gives_too_many_rates(fresh_dynamo, capsys):
    schedule = vitpss.build_schedule("linear", low=0.1, high=1.0, quantum=0.0, steps_per_epoch=100, epochs=1)
    compile_for_schedule(tiny_model(), schedule)
    err = capsys.readouterr().err
    assert "100 distinct rates" in err and "--quantum 0.2" in err
    assert len(schedule.levels()) > MAX_COMPILED_RATES


def train_losses(run_dir) -> list[tuple[float, float]]:
    records = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return [(r["keep_rate"], r["loss"]) for r in records]


@pytest.mark.slow
def test_train_compile_runs_one_graph_per_rate_and_matches_eager(tmp_path, fresh_dynamo, monkeypatch):
    compile_fn = torch.compile  # inductor would take minutes on a shared CPU: same graphs, cheaper backend
    monkeypatch.setattr(torch, "compile", lambda net, **kw: compile_fn(net, **{**kw, "backend": "aot_eager"}))
    # the default sampler, random, drawing from the run's generator: its draw must not split the graphs
    flags = ["--synthetic-size", "80", "--drop-path", "0", "--schedule", "cyclic", "--quantum", "0.2"]
    assert main(tiny_run(tmp_path / "eager", *flags, epochs=1)) == 0
    assert main(tiny_run(tmp_path / "compiled", *flags, "--compile", epochs=1)) == 0
    eager, compiled = train_losses(tmp_path / "eager"), train_losses(tmp_path / "compiled")
    assert [r for r, _ in compiled] == [r for r, _ in eager]
    assert [loss for _, loss in compiled] == pytest.approx([loss for _, loss in eager], rel=1e-4, abs=1e-5)
    assert fresh_dynamo["stats"]["unique_graphs"] == len({r for r, _ in eager}) == 5


# How the model is compiled -> how the steps call it. In every wrapping each keep rate compiles once;
# the draw from a generator happens outside the graph (the model's pre-hook runs before the compiled
# code when the attached model itself is compiled) or, inside a compiled wrapper, splits the
# wrapper's frame once per step at a rate < 1 (one extra graph in all).
class Wrapper(torch.nn.Module):
    """A plain module around the attached model, as a LightningModule or a user's loss wrapper."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def compiled(how: str, model: torch.nn.Module, backend) -> torch.nn.Module:
    if how == "torch.compile(model)":
        return torch.compile(model, backend=backend, dynamic=False)
    if how == "model.compile()":
        model.compile(backend=backend, dynamic=False)
        return model
    return torch.compile(Wrapper(model), backend=backend, dynamic=False)


RATES = (1.0, 0.8, 0.6, 0.4, 0.2) * 2


@pytest.mark.parametrize("how", ["torch.compile(model)", "model.compile()", "torch.compile(wrapper)"])
@pytest.mark.parametrize("sampler", ["random", "magnitude"])
def test_every_wrapping_compiles_each_keep_rate_once_and_matches_eager(fresh_dynamo, how, sampler):
    from torch._dynamo.testing import CompileCounter

    backend = CompileCounter()
    eager = tiny_model(sampler).train()
    model = copy.deepcopy(eager)  # same weights and generator state
    net = compiled(how, model, backend)
    for rate in RATES:
        torch.testing.assert_close(train_step(net, model, rate), train_step(eager, eager, rate), rtol=1e-5, atol=1e-6)
    splits_at_the_draw = how == "torch.compile(wrapper)" and sampler == "random"
    assert backend.frame_count == len(set(RATES)) + splits_at_the_draw
    assert bool(fresh_dynamo["graph_break"]) == splits_at_the_draw


def hf_vit() -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=10))


def open_clip_tower() -> torch.nn.Module:
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    return open_clip.transformer.VisionTransformer(image_size=32, patch_size=4, width=32, layers=2, heads=2,
                                                   mlp_ratio=2.0, output_dim=10)


@pytest.mark.parametrize("build", [hf_vit, open_clip_tower], ids=["hf_vit", "open_clip_tower"])
def test_compiled_hf_and_open_clip_models_draw_ahead_one_graph_per_rate(fresh_dynamo, build):
    # what HF Trainer(torch_compile=True) and a compiled open_clip tower do: the noise is drawn by a
    # pre-hook of the attached model (the samplers sit deep inside), so the forward is not split
    from torch._dynamo.testing import CompileCounter

    backend = CompileCounter()
    eager = vitpss.attach(build(), sampler="random", generator=torch.Generator().manual_seed(1)).train()
    model = copy.deepcopy(eager)
    net = torch.compile(model, backend=backend, dynamic=False)

    def logits(out):
        return out.logits if hasattr(out, "logits") else out

    x = batch()[0]
    for rate in RATES:
        vitpss.set_keep_rate(eager, rate)
        vitpss.set_keep_rate(model, rate)
        expected, got = logits(eager(x)), logits(net(x))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert backend.frame_count == len(set(RATES)) and not fresh_dynamo["graph_break"]


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["random", "magnitude"])
def test_compiled_lightning_module_compiles_each_keep_rate_once(fresh_dynamo, tmp_path, sampler):
    lightning = pytest.importorskip("lightning")
    from torch._dynamo.testing import CompileCounter

    class Classifier(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = tiny_model(sampler)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

        def on_train_batch_start(self, data, index) -> None:  # where vitpss's Lightning callback sets it
            vitpss.set_keep_rate(self.model, RATES[self.global_step % len(RATES)])

        def training_step(self, data, index):
            return torch.nn.functional.cross_entropy(self(data[0]), data[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    backend = CompileCounter()
    data = torch.utils.data.TensorDataset(*batch())
    trainer = lightning.Trainer(max_steps=len(RATES), accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(torch.compile(Classifier(), backend=backend, dynamic=False),
                torch.utils.data.DataLoader(data, batch_size=4))
    splits_at_the_draw = sampler == "random"  # the model runs inside the compiled training_step
    assert backend.frame_count == len(set(RATES)) + 2 * splits_at_the_draw  # measured: 7 with random, 5 without
    assert bool(fresh_dynamo["graph_break"]) == splits_at_the_draw


@pytest.fixture
def one_process_group():
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_compiled_ddp_compiles_each_keep_rate_once_and_the_draw_adds_no_graph_break(fresh_dynamo, one_process_group):
    # what `vitpss train --compile` under torchrun does: torch.compile(DDP(model)). Dynamo runs DDP's
    # forward as Python (its own breaks) and compiles the attached model's frame, whose pre-hook stays outside
    from torch._dynamo.testing import CompileCounter

    breaks = {}
    for sampler in ("random", "magnitude"):
        torch._dynamo.reset()
        fresh_dynamo.clear()
        backend = CompileCounter()
        eager = tiny_model(sampler).train()
        model = copy.deepcopy(eager)
        net = torch.compile(torch.nn.parallel.DistributedDataParallel(model), backend=backend, dynamic=False)
        for rate in RATES:
            torch.testing.assert_close(train_step(net, model, rate), train_step(eager, eager, rate),
                                       rtol=1e-5, atol=1e-6)
        assert backend.frame_count == len(set(RATES))
        breaks[sampler] = dict(fresh_dynamo["graph_break"])
    assert breaks["random"] == breaks["magnitude"]  # DDP's own, not the sampler's
