"""runtime, the acceleration layer: one switch converts the task's networks and sets malloc; builders stay plain.

Malloc settings are applied once and can be refused; every task adds the switch to a Trainer that
has none; ``auto`` gives the trained networks (momentum copies included) matmul small-map
convolutions on bf16 runs on a CPU with AMX, ``on`` on any bf16 CPU run and ``off`` none; exports
are unchanged; losses compute in fp32.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from jsonargparse import ArgumentParser
from torch import nn
from torch.utils.data import Dataset

import noisyseg.runtime as runtime
from noisyseg.data import DataModule
from noisyseg.losses import CEDiceLoss, InfoNCELoss
from noisyseg.models.networks import DECODERS, build_encoder, build_segmentation_model
from noisyseg.runfiles import read_encoder
from noisyseg.runtime import MALLOC_ENV, Acceleration, SmallMapConv2d, _MatmulConv, fp32_forward, use_matmul_convs
from noisyseg.tasks import DenseContrastTask, DINOTask, MoCoTask, SegmentationTask
from noisyseg.tasks.base import BaseTask

PROBE = "from noisyseg.runtime import keep_freed_memory as k; print(k(), k())"


def _probe(env_value: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != MALLOC_ENV}
    if env_value is not None:
        env[MALLOC_ENV] = env_value
    # a fresh interpreter: the settings are process-wide and cannot be undone
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout.split()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_applies_once_on_glibc() -> None:
    assert _probe(None) == ["True", "True"]


def test_keep_freed_memory_leaves_malloc_alone_when_told() -> None:
    assert _probe("system") == ["False", "False"]


def stub_trainer(device: str = "cpu", precision: str = "bf16-mixed", callbacks: list | None = None) -> SimpleNamespace:
    """What :class:`Acceleration` and ``configure_callbacks`` read from a Trainer."""
    return SimpleNamespace(precision=precision, strategy=SimpleNamespace(root_device=torch.device(device)),
                           callbacks=callbacks or [])


def convs(module: nn.Module) -> tuple[int, int]:
    """``(plain Conv2d, SmallMapConv2d)`` counts in ``module``."""
    mods = list(module.modules())
    return sum(type(m) is nn.Conv2d for m in mods), sum(type(m) is SmallMapConv2d for m in mods)


@pytest.mark.parametrize("make", [lambda: MoCoTask(queue_size=8), lambda: SegmentationTask(num_classes=2)])
def test_every_task_adds_the_switch_and_it_sets_malloc_when_a_cpu_fit_starts(monkeypatch, make) -> None:
    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(1) or True)
    task = make()
    task._trainer = stub_trainer()
    (cb,) = task.configure_callbacks()
    assert isinstance(cb, Acceleration) and cb.mode == "auto"
    cb.on_fit_start(stub_trainer(device="cuda"), task)
    assert calls == []  # malloc is the CPU's concern
    cb.on_fit_start(stub_trainer(), task)
    assert calls == [1]
    Acceleration("off").on_fit_start(stub_trainer(), task)
    assert calls == [1]
    Acceleration("on").on_fit_start(stub_trainer(), task)
    assert calls == [1, 1]
    task._trainer = stub_trainer(callbacks=[Acceleration("off")])
    assert task.configure_callbacks() == []  # the Trainer's own switch decides


@pytest.fixture
def amx(monkeypatch) -> None:
    """This process runs on a CPU with AMX, where ``auto`` converts."""
    monkeypatch.setattr(runtime, "cpu_has_amx", lambda: True)


def test_switch_modes_and_where_they_convert(monkeypatch) -> None:
    with pytest.raises(ValueError, match="mode='fast'.*'auto', 'on', 'off'"):
        Acceleration("fast")
    auto, on = Acceleration(), Acceleration("on")
    for has_amx in (True, False):
        monkeypatch.setattr(runtime, "cpu_has_amx", lambda: has_amx)
        assert auto.matmul_convs_apply(stub_trainer()) is has_amx  # auto: only where measured faster
        assert auto.matmul_convs_apply(stub_trainer(precision="bf16-true")) is has_amx
        assert on.matmul_convs_apply(stub_trainer()) and on.matmul_convs_apply(stub_trainer(precision="bf16-true"))
        for mode in (auto, on):
            assert not mode.matmul_convs_apply(stub_trainer(precision="32-true"))
            assert not mode.matmul_convs_apply(stub_trainer(device="cuda"))
        assert not Acceleration("off").matmul_convs_apply(stub_trainer())
    # a YAML config's unquoted `off` / `on` arrive as False / True
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--callbacks", type=list[L.Callback])
    for value, mode in (("off", "off"), ("'off'", "off"), ("auto", "auto"), ("on", "on"), ("'on'", "on"), ("true", "on")):
        cfg = parser.parse_string(f"callbacks: [{{class_path: noisyseg.runtime.Acceleration, init_args: {{mode: {value}}}}}]")
        assert parser.instantiate(cfg).callbacks[0].mode == mode, value


def test_cpu_flags_are_read_from_the_flags_lines() -> None:
    text = "processor\t: 0\nmodel name\t: X flags amx_bf16 in a name\nflags\t\t: fpu avx512_bf16 sse\n\nflags\t: fpu\n"
    assert runtime.cpu_flags(text) == {"fpu", "avx512_bf16", "sse"}  # a flag in the model name is no flag
    assert runtime.cpu_flags("processor\t: 0\n") == frozenset()


@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_builders_return_plain_convolutions(decoder) -> None:
    assert convs(build_encoder("resnet18", 4)) == (20, 0)  # resnet18: stem + 16 block convs + 3 downsamples
    plain, fast = convs(build_segmentation_model(decoder, "resnet18", 3, 2))
    assert plain > 20 and fast == 0


def test_conversion_reaches_networks_and_their_momentum_copies_not_heads() -> None:
    dino = DINOTask()
    Acceleration("on").setup(stub_trainer(), dino, "fit")
    assert convs(dino.teacher) == (0, 20) and convs(dino.student) == (0, 20)
    assert dino.teacher.encoder.layer4[0].conv1 is not dino.student.encoder.layer4[0].conv1  # a copy, converted
    dense = DenseContrastTask()
    Acceleration("on").setup(stub_trainer(), dense, "fit")
    assert convs(dense.encoder) == (0, 20)
    assert convs(dense) == (2, 20)  # the 1x1-conv projection head keeps torch's convolution
    seg = SegmentationTask(decoder="fcn", num_classes=2)
    Acceleration("on").setup(stub_trainer(precision="32-true"), seg, "fit")
    assert convs(seg.model)[1] == 0  # fp32 run: nothing to gain
    Acceleration("on").setup(stub_trainer(), seg, "fit")
    assert convs(seg.model) == (0, 22)  # FCN: encoder and its head
    assert use_matmul_convs(seg.model) is seg.model and convs(seg.model) == (0, 22)  # again: no change


class Images(Dataset):
    def __init__(self, n: int = 8, size: int = 32) -> None:
        self.x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i]}


def fit_bf16(task: L.LightningModule, callbacks: list | None = None) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, precision="bf16-mixed", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=callbacks or [])
    trainer.fit(task, datamodule=DataModule(train=Images(), batch_size=4))
    return trainer


@pytest.fixture
def matmul_calls(monkeypatch) -> list[bool]:
    """``torch.is_grad_enabled()`` of every matmul-route convolution call."""
    calls: list[bool] = []
    original = _MatmulConv.apply
    monkeypatch.setattr(_MatmulConv, "apply", lambda *a: calls.append(torch.is_grad_enabled()) or original(*a))
    return calls


def test_auto_trains_moco_with_matmul_convolutions_in_query_and_key(one_thread, matmul_calls, amx) -> None:
    task = MoCoTask(queue_size=8)
    trainer = fit_bf16(task)
    assert sum(isinstance(cb, Acceleration) for cb in trainer.callbacks) == 1
    assert convs(task.query) == (0, 20) and convs(task.key) == (0, 20)
    # layer 4 at 1x1 (32 px): the query (with gradients) and the key encoder (no_grad) took the route
    assert True in matmul_calls and False in matmul_calls


def test_off_trains_moco_with_plain_convolutions(one_thread, matmul_calls) -> None:
    task = MoCoTask(queue_size=8)
    trainer = fit_bf16(task, callbacks=[Acceleration("off")])
    assert [cb.mode for cb in trainer.callbacks if isinstance(cb, Acceleration)] == ["off"]
    assert convs(task) == (40, 0) and matmul_calls == []


def test_auto_trains_moco_with_plain_convolutions_on_a_cpu_without_amx(one_thread, matmul_calls, monkeypatch) -> None:
    monkeypatch.setattr(runtime, "cpu_has_amx", lambda: False)
    task = MoCoTask(queue_size=8)
    trainer = fit_bf16(task)
    assert [cb.mode for cb in trainer.callbacks if isinstance(cb, Acceleration)] == ["auto"]
    assert convs(task) == (40, 0) and matmul_calls == []


class LateEncoder(BaseTask):
    """A task that builds its network in ``configure_model``."""

    def configure_model(self) -> None:
        if not hasattr(self, "encoder"):
            self.encoder = build_encoder("resnet18", 3)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.encoder(batch["image"])[-1].float().mean()


def test_networks_built_in_configure_model_are_converted_and_trained(one_thread, matmul_calls, amx) -> None:
    task = LateEncoder(method="late")
    trainer = fit_bf16(task)
    assert convs(task.encoder) == (0, 20) and True in matmul_calls
    opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in task.encoder.parameters()}  # the optimiser trains the converted network


def test_export_after_acceleration_has_the_plain_keys_and_values(tmp_path) -> None:
    task = SegmentationTask(decoder="unet", num_classes=2)
    task.export_encoder(str(tmp_path / "plain.safetensors"))
    Acceleration("on").setup(stub_trainer(), task, "fit")
    assert convs(task.encoder) == (0, 20)
    task.export_encoder(str(tmp_path / "fast.safetensors"))
    plain, _ = read_encoder(tmp_path / "plain.safetensors")
    fast, _ = read_encoder(tmp_path / "fast.safetensors")
    assert sorted(fast) == sorted(plain) == sorted(build_encoder("resnet18").state_dict())  # the file sorts keys
    assert all(torch.equal(fast[k], plain[k]) for k in plain)
    build_encoder("resnet18").load_state_dict(fast, strict=True)


class Similarity(nn.Module):
    @fp32_forward
    def forward(self, a: torch.Tensor, b: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return (a @ b.T) * scale  # under bf16 autocast a matmul would run in bf16


def test_fp32_forward_turns_autocast_off_and_casts_tensor_arguments() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 64, generator=g), torch.randn(8, 64, generator=g)
    exact = a @ b.T
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = Similarity()(a, b, scale=1.0)
        bf16_in = Similarity()(a.bfloat16(), b=b.bfloat16())
        assert (a @ b.T).dtype == torch.bfloat16  # what the decorator protects from
    assert out.dtype == torch.float32 and torch.equal(out, exact)
    torch.testing.assert_close(bf16_in, a.bfloat16().float() @ b.bfloat16().float().T)
    assert bf16_in.dtype == torch.float32


def test_losses_give_their_fp32_value_under_bf16_autocast() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, queue = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g), torch.randn(32, 16, generator=g)
    logits, target = torch.randn(2, 3, 8, 8, generator=g), torch.randint(0, 3, (2, 8, 8), generator=g)
    for loss, args in ((InfoNCELoss(temperature=0.2), (q.bfloat16(), k.bfloat16(), queue)),
                       (CEDiceLoss(), (logits.bfloat16(), target))):
        plain = loss(*[x.float() if x.is_floating_point() else x for x in args])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under = loss(*args)
        assert under.dtype == torch.float32 and torch.equal(under, plain), type(loss).__name__
