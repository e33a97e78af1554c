"""BaseTask plumbing every task shares, against values: schedules, optimiser, batch checks, export.

The tasks' own wiring is tested in ``test_{moco,dino,dense}_wiring.py``; these tests pin what
``BaseTask`` does for all of them (the mutation run found these paths untested).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from noisyseg.runfiles import read_encoder
from noisyseg.tasks.base import (LR_SCHEDULES, BaseTask, RepresentationHealth, _fusable, batch_sources, constant,
                                 warmup_constant, warmup_cosine)


class Tiny(BaseTask):
    """A BaseTask with a 3-band conv 'encoder' (what ``on_before_batch_transfer`` reads the band count from)."""

    def __init__(self, extra: dict | None = None, **kw) -> None:
        super().__init__(**kw)
        self.save_hyperparameters()  # as every task does: the encoder file records the plain-valued ones
        self.encoder = nn.Sequential()
        self.encoder.conv1 = nn.Conv2d(3, 4, 3)
        self.encoder.bn1 = nn.BatchNorm2d(4)


class HealthTiny(RepresentationHealth, Tiny):
    """``Tiny`` with the self-supervised tasks' health logging."""


def batch(n: int = 2, bands: int = 3, sources: list[str] | None = None) -> dict:
    b = {"image": torch.zeros(n, bands, 4, 4)}
    if sources is not None:
        b["meta"] = [{"source": s} for s in sources]
    return b


# ------------------------------------------------------------------------------------- schedules
@pytest.mark.parametrize(("step", "expected"), [(0, 1 / 10), (4, 5 / 10), (9, 1.0), (10, 1.0), (55, 0.5), (100, 0.0), (150, 0.0)])
def test_warmup_cosine_values(step: int, expected: float) -> None:
    # 100 steps, 10 of warm-up: linear (s + 1) / 10, then 0.5 (1 + cos(pi (s - 10) / 90))
    assert warmup_cosine(step, 100, 10) == pytest.approx(expected, abs=1e-12)


def test_warmup_cosine_mid_decay_and_no_total() -> None:
    assert warmup_cosine(40, 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 30 / 90)))
    assert warmup_cosine(0, 100, 0) == 1.0  # no warm-up: cosine starts at 1
    assert warmup_cosine(5, 0, 0) == 1.0  # no trainer (total unknown): the peak lr


def test_warmup_constant_and_constant_values() -> None:
    assert [warmup_constant(s, 100, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert [constant(s, 100, 4) for s in (0, 3, 99)] == [1.0, 1.0, 1.0]
    assert set(LR_SCHEDULES) == {"constant", "warmup_constant", "warmup_cosine"}


# ------------------------------------------------------------------------------------- optimiser
def test_fusable_only_for_floating_cpu_parameters() -> None:
    assert _fusable([nn.Parameter(torch.zeros(2))])
    assert _fusable([{"params": [nn.Parameter(torch.zeros(2))]}])
    assert not _fusable([])
    assert not _fusable([torch.zeros(2, dtype=torch.long)])
    assert not _fusable([nn.Parameter(torch.zeros(2)), torch.zeros(2, device="meta")])


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_configure_optimizers_lr_decay_and_schedule(name: str) -> None:
    task = Tiny(lr=0.1, weight_decay=0.03, optimizer=name, warmup_fraction=0.2, lr_schedule="warmup_cosine")
    task._trainer = SimpleNamespace(estimated_stepping_batches=50)
    out = task.configure_optimizers()
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert out["lr_scheduler"]["interval"] == "step"
    assert isinstance(opt, torch.optim.SGD if name == "sgd" else torch.optim.AdamW)
    group = opt.param_groups[0]
    assert group["weight_decay"] == 0.03 and group["fused"] is True
    if name == "sgd":
        assert group["momentum"] == 0.9
    assert sum(p.numel() for p in group["params"]) == sum(p.numel() for p in task.parameters())
    # warm-up over int(0.2 * 50) = 10 steps: lr 0.1 * (s + 1) / 10, then the cosine over 40
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.01, 0.02, 0.03])
    assert lrs[9] == pytest.approx(0.1) and lrs[10] == pytest.approx(0.1)
    assert lrs[11] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 40)))


def test_configure_optimizers_constant_ignores_warmup_and_trainable_only() -> None:
    task = Tiny(lr=0.02, lr_schedule="constant", warmup_fraction=0.5)
    task.encoder.conv1.weight.requires_grad_(False)
    task._trainer = SimpleNamespace(estimated_stepping_batches=10)
    out = task.configure_optimizers()
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    for _ in range(3):
        assert opt.param_groups[0]["lr"] == 0.02
        opt.step()
        sched.step()
    assert all(p is not task.encoder.conv1.weight for p in opt.param_groups[0]["params"])


@pytest.mark.parametrize("kw", [{"lr": 0.0}, {"lr": -1e-3}, {"warmup_fraction": -0.01}, {"warmup_fraction": 1.01},
                                {"optimizer": "adam"}, {"lr_schedule": "cosine"}])
def test_bad_arguments_raise(kw: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kw))):
        Tiny(**kw)


@pytest.mark.parametrize("kw", [{"lr": 1e-9}, {"warmup_fraction": 0.0}, {"warmup_fraction": 1.0}])
def test_boundary_arguments_accepted(kw: dict) -> None:
    task = Tiny(**kw)
    assert getattr(task, "lr" if "lr" in kw else "warmup_fraction") == next(iter(kw.values()))


# ------------------------------------------------------------------------------------- batch checks
def test_batch_sources_names_deduplicates_and_limits() -> None:
    b = batch(5, sources=["a.tif", "b.tif", "a.tif", "c.tif", "d.tif"])
    assert batch_sources(b) == "a.tif, b.tif, c.tif (+1 more)"
    assert batch_sources(b, [1, 3]) == "b.tif, c.tif"
    assert batch_sources(b, [4, 9]) == "d.tif"  # an index past the batch is ignored
    assert batch_sources(b, limit=4) == "a.tif, b.tif, c.tif, d.tif"
    assert batch_sources({"meta": [{"id": "t7"}, 3]}) == "t7, ?"
    assert batch_sources(batch(2)) == "a dataset without meta['source']"
    assert batch_sources({"meta": []}) == "a dataset without meta['source']"
    assert batch_sources([{"meta": "x"}]) == "a dataset without meta['source']"  # not a dict batch


def test_nan_pixels_raise_naming_samples_and_sources() -> None:
    task, b = Tiny(), batch(3, sources=["x.tif", "y.tif", "z.tif"])
    b["image"][2, 1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"'image' holds NaN/Inf pixels in sample\(s\) \[2\] from z\.tif"):
        task.on_before_batch_transfer(b, 0)
    b = batch(2, sources=["x.tif", "y.tif"])
    b["image2"] = torch.zeros(2, 3, 4, 4)
    b["image2"][0, 0, 1, 1] = float("inf")
    with pytest.raises(ValueError, match=r"'image2' holds NaN/Inf pixels in sample\(s\) \[0\] from x\.tif"):
        task.on_before_batch_transfer(b, 0)


def test_band_count_and_shape_checks() -> None:
    task = Tiny()
    with pytest.raises(ValueError, match="has 4 bands but the model's encoder takes 3"):
        task.on_before_batch_transfer(batch(2, bands=4, sources=["s.tif"] * 2), 0)
    with pytest.raises(ValueError, match=r"float \[B, C, H, W\] tensor, got torch.int64"):
        task.on_before_batch_transfer({"image": torch.zeros(1, 3, 4, 4, dtype=torch.long)}, 0)
    with pytest.raises(ValueError, match=r"\(3, 4, 4\)"):
        task.on_before_batch_transfer({"image": torch.zeros(3, 4, 4)}, 0)
    good = batch(2, sources=["s.tif"] * 2)
    assert task.on_before_batch_transfer(good, 0) is good  # a good batch passes unchanged


def test_after_transfer_makes_both_views_channels_last_only_when_asked() -> None:
    b = {"image": torch.randn(2, 3, 4, 4), "image2": torch.randn(2, 3, 4, 4), "mask": torch.zeros(2, 4, 4)}
    out = Tiny(channels_last=True).on_after_batch_transfer(dict(b), 0)
    for key in ("image", "image2"):
        assert out[key].is_contiguous(memory_format=torch.channels_last) and torch.equal(out[key], b[key])
    out = Tiny(channels_last=False).on_after_batch_transfer(dict(b), 0)
    assert out["image"].is_contiguous() and not out["image"].is_contiguous(memory_format=torch.channels_last)


def test_setup_sets_channels_last_parameters() -> None:
    task = Tiny(channels_last=True)
    task.setup("fit")
    assert task.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    task = Tiny(channels_last=False)
    task.setup("fit")
    assert not task.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------------- health, export
def test_check_finite_passes_finite_and_stops_on_nan() -> None:
    task = Tiny()
    loss = torch.tensor(1.5)
    assert task.check_finite(loss) is loss
    with pytest.raises(FloatingPointError, match=r"loss became nan at global step 0"):
        task.check_finite(torch.tensor(float("nan")))
    with pytest.raises(FloatingPointError, match=r"kl became inf"):
        task.check_finite(torch.tensor(float("inf")), "kl")


def test_log_health_logs_every_n_steps_and_warns_on_collapse(monkeypatch) -> None:
    task = HealthTiny()
    logged = []
    monkeypatch.setattr(task, "log_dict", lambda d, **kw: logged.append((d, kw)))
    z = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    task.log_health(z, every=20)  # step 0: logged
    assert len(logged) == 1 and set(logged[0][0]) == {"health/embedding_std", "health/effective_rank"}
    assert logged[0][1]["batch_size"] == 16
    task.log_health(z[:1], every=20)  # one embedding: nothing to measure
    assert len(logged) == 1
    monkeypatch.setattr(type(task), "global_step", property(lambda self: 40))
    with pytest.warns(UserWarning, match="representation collapse at step 40"):
        task.log_health(torch.ones(16, 8), every=20)  # every row equal: collapsed
    monkeypatch.setattr(type(task), "global_step", property(lambda self: 41))
    task.log_health(z, every=20)  # not a multiple of 20: skipped
    assert len(logged) == 2


def test_training_summary_without_and_with_trainer() -> None:
    task = Tiny(lr=0.5, method="tiny", extra={"a": 1})
    s = task.training_summary()
    assert s == {"method": "tiny", "task": "Tiny", "epochs": 0, "steps": 0, "hparams": s["hparams"]}
    assert s["hparams"]["lr"] == 0.5 and s["hparams"]["method"] == "tiny"
    assert "extra" not in s["hparams"]  # only plain values go into the file's JSON
    task._trainer = SimpleNamespace(current_epoch=3, global_step=42, datamodule=SimpleNamespace(normalization={"mean": [1.0]}))
    s = task.training_summary()
    assert (s["epochs"], s["steps"]) == (3, 42)
    assert task.normalization() is None  # the data module's is not read: it is an argument
    assert Tiny(input_normalization={"mean": [1.0]}).normalization() == {"mean": [1.0]}


def test_export_encoder_writes_weights_normalisation_and_summary(tmp_path) -> None:
    norm = {"mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0]}
    task = Tiny(arch="resnet18", method="tiny", input_normalization=norm)
    with torch.no_grad():
        task.encoder.conv1.weight.normal_()
    task._trainer = SimpleNamespace(current_epoch=2, global_step=7, datamodule=SimpleNamespace(normalization=None))
    task.export_encoder(str(tmp_path / "enc.safetensors"))
    state, meta = read_encoder(tmp_path / "enc.safetensors")
    assert torch.equal(state["conv1.weight"], task.encoder.conv1.weight)
    assert meta["normalization"] == norm and meta["arch"] == "resnet18" and meta["in_channels"] == 3
    assert meta["trained"]["method"] == "tiny" and meta["trained"]["steps"] == 7


# ------------------------------------------------------------------------------------- edges
def test_schedule_edges_short_runs() -> None:
    assert warmup_cosine(0, 10, 1) == 1.0  # one warm-up step reaches the peak at once
    assert warmup_cosine(1, 1, 0) == pytest.approx(0.0)  # a one-step run decays over that step
    assert warmup_cosine(2, 2, 1) == pytest.approx(0.0)  # one decay step after one warm-up step


def test_configure_optimizers_without_a_trainer_keeps_the_peak_lr() -> None:
    out = Tiny(lr=0.1, warmup_fraction=0.0).configure_optimizers()
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    for _ in range(2):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1)  # total unknown: factor 1 at every step
        opt.step()
        sched.step()


def test_batch_sources_edges() -> None:
    b = batch(5, sources=list("abcde"))
    assert batch_sources(b, [5]) == ""  # an index equal to the batch size is past its end
    assert batch_sources({"meta": [{}]}) == "?"  # neither source nor id


def test_batch_checks_skip_what_is_not_a_batch_and_check_image2_alone() -> None:
    task = Tiny()
    assert task.on_before_batch_transfer([1, 2], 0) == [1, 2]  # not a dict: nothing to check
    bad = {"image2": torch.full((1, 3, 4, 4), float("nan"))}  # no 'image', only a partner view
    with pytest.raises(ValueError, match="'image2' holds NaN"):
        task.on_before_batch_transfer(bad, 0)


def test_log_health_edges(monkeypatch) -> None:
    task = HealthTiny()
    logged = []
    monkeypatch.setattr(task, "log_dict", lambda d, **kw: logged.append(d))
    step = {"n": 0}
    monkeypatch.setattr(type(task), "global_step", property(lambda self: step["n"]))
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    task.log_health(z, every=20)  # two embeddings are enough to measure
    assert len(logged) == 1
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        task.log_health(torch.ones(16, 8), every=20)  # collapsed at step 0 (before any update): no warning
        step["n"] = 20
        task.log_health(torch.randn(16, 8, generator=torch.Generator().manual_seed(1)), every=20)  # healthy: none
    step["n"] = 40
    task.log_health(z)  # the default interval (20 steps) logs at step 40
    assert len(logged) == 4  # steps 0 (twice), 20 and 40
    step["n"] = 1
    with pytest.warns(UserWarning, match="representation collapse at step 1"):
        task.log_health(torch.ones(16, 8), every=1)


def test_normalization_without_input_normalization() -> None:
    task = Tiny()
    assert task.normalization() is None  # no trainer
    task._trainer = SimpleNamespace(datamodule=SimpleNamespace(normalization={"mean": [1.0]}))
    assert task.normalization() is None  # nothing given: the data module's is not fished out


def test_export_encoder_records_the_weights_source(tmp_path) -> None:
    task = Tiny(arch="resnet18")
    task.encoder_source = {"kind": "file", "path": "pretrained.safetensors"}
    task.export_encoder(str(tmp_path / "enc.safetensors"))
    _, meta = read_encoder(tmp_path / "enc.safetensors")
    assert meta["source"] == {"kind": "file", "path": "pretrained.safetensors"}
