"""Noise-robust pixel losses against loops over their paper formulas, and their task wiring.

    label smoothing (Szegedy et al. 2016)   l = -sum_k ((1 - eps) [k = y] + eps / K) log p_k
    symmetric CE (Wang et al. 2019)         l = alpha (-log p_y) + beta (-sum_k p_k log q_k), log 0 := A
    generalized CE (Zhang & Sabuncu 2018)   l = (1 - p_y^q) / q
    bootstrapping (Reed et al. 2015)        l = -sum_k (beta t_k + (1 - beta) z_k) log p_k,
                                            z = p (soft, fixed) or onehot(argmax p) (hard)
    small-loss selection (Han et al. 2018)  keep floor(s N) lowest-loss labelled pixels,
                                            s = 1 - (1 - keep) min(progress / ramp_fraction, 1)

The loops below work on one pixel at a time with ``math`` in float64; the losses under test are fp32.
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from segmentation_models_pytorch.losses import DiceLoss

from noisyseg.config import instantiate
from noisyseg.data import DataModule, VTSSegmentation
from noisyseg.data.loading import IMAGE, MASK
from noisyseg.losses import CEDiceLoss
from noisyseg.losses.robust import (
    BootstrappingCE,
    GeneralizedCE,
    LabelSmoothingCE,
    SmallLossSelection,
    SymmetricCE,
    WithDice,
)

# four pixels of a 1 x 3 x 2 x 2 batch, pixel-major (row-major over H x W); the last is unlabelled
LOGITS = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]
TARGET = [0, 2, 1, 255]
CLOSE = {"rel": 1e-5, "abs": 1e-6}


def batch(logits=LOGITS, target=TARGET) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-major lists -> logits ``[1, K, H, W]`` (requires grad), target ``[1, H, W]`` (H = 2)."""
    x = torch.tensor(logits).T.reshape(1, len(logits[0]), 2, -1).clone().requires_grad_(True)
    return x, torch.tensor(target).reshape(1, 2, -1)


def value(t) -> float:
    return float(t.detach()) if isinstance(t, torch.Tensor) else float(t)


def softmax(v: list[float]) -> list[float]:
    e = [math.exp(a - max(v)) for a in v]
    return [a / sum(e) for a in e]


def loop_mean(pixel_fn, logits=LOGITS, target=TARGET, weights=None) -> float:
    """``sum w[y] l / sum w[y]`` over labelled pixels; ``pixel_fn(p, y) -> l``."""
    num = den = 0.0
    for v, y in zip(logits, target):
        if y == 255:
            continue
        w = 1.0 if weights is None else weights[y]
        num += w * pixel_fn(softmax(v), y)
        den += w
    return num / den if den else 0.0


# ----------------------------------------------------------------------------- formulas
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_matches_formula(eps):
    def pixel(p, y):
        k = len(p)
        return -sum(((1 - eps) * (j == y) + eps / k) * math.log(p[j]) for j in range(k))

    x, t = batch()
    assert value(LabelSmoothingCE(eps)(x, t)) == pytest.approx(loop_mean(pixel), **CLOSE)


@pytest.mark.parametrize(("alpha", "beta", "a"), [(0.1, 1.0, -4.0), (1.0, 0.5, -9.0)])
def test_symmetric_ce_matches_formula(alpha, beta, a):
    def pixel(p, y):
        ce = -math.log(p[y])
        # reverse CE against the one-hot label q: log q_y = log 1 = 0, log q_k = log 0 := A
        rce = -sum(p[k] * (0.0 if k == y else a) for k in range(len(p)))
        return alpha * ce + beta * rce

    x, t = batch()
    assert value(SymmetricCE(alpha, beta, log_zero=a)(x, t)) == pytest.approx(loop_mean(pixel), **CLOSE)


def test_symmetric_ce_default_log_zero_is_minus_four():
    x, t = batch()
    expected = loop_mean(lambda p, y: 0.1 * -math.log(p[y]) + 1.0 * 4.0 * (1 - p[y]))
    assert value(SymmetricCE()(x, t)) == pytest.approx(expected, **CLOSE)


@pytest.mark.parametrize("q", [0.7, 1.0, 0.1])
def test_generalized_ce_matches_formula(q):
    x, t = batch()
    expected = loop_mean(lambda p, y: (1 - p[y] ** q) / q)
    assert value(GeneralizedCE(q)(x, t)) == pytest.approx(expected, **CLOSE)


def test_generalized_ce_class_weights_weight_each_pixel_by_its_label():
    w = [0.5, 2.0, 3.0]
    x, t = batch()
    expected = loop_mean(lambda p, y: (1 - p[y] ** 0.7) / 0.7, weights=w)
    assert value(GeneralizedCE(0.7, class_weights=w)(x, t)) == pytest.approx(expected, **CLOSE)


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_bootstrapping_matches_formula(mode):
    beta = 0.8

    def pixel(p, y):
        top = max(range(len(p)), key=lambda k: p[k])
        z = p if mode == "soft" else [float(k == top) for k in range(len(p))]
        return -sum((beta * (k == y) + (1 - beta) * z[k]) * math.log(p[k]) for k in range(len(p)))

    x, t = batch()
    assert value(BootstrappingCE(beta, mode)(x, t)) == pytest.approx(loop_mean(pixel), **CLOSE)


def test_soft_bootstrapping_treats_the_prediction_as_a_fixed_target():
    """d/dz of -sum_k c_k log softmax(z)_k with c fixed is p - c = beta (p - t) for c = beta t + (1-beta) p."""
    beta = 0.6
    x, t = batch()
    BootstrappingCE(beta, "soft")(x, t).backward()
    labelled = [i for i, y in enumerate(TARGET) if y != 255]
    for i, (v, y) in enumerate(zip(LOGITS, TARGET)):
        p = softmax(v)
        for k in range(3):
            want = 0.0 if y == 255 else beta * (p[k] - (k == y)) / len(labelled)
            assert value(x.grad[0, k].flatten()[i]) == pytest.approx(want, abs=1e-6)


# ----------------------------------------------------------------------------- ignore index
ALL_LOSSES = [
    LabelSmoothingCE, SymmetricCE, GeneralizedCE, BootstrappingCE,
    lambda: BootstrappingCE(mode="hard"), SmallLossSelection,
    lambda: SmallLossSelection(mode="confident", threshold=0.9, ramp_fraction=0.0),
    lambda: WithDice(SymmetricCE()),
]


@pytest.mark.parametrize("make", ALL_LOSSES)
def test_ignored_pixels_contribute_nothing(make):
    x, t = batch()
    loss = make()
    ref = loss(x, t)
    ref.backward()
    assert torch.all(x.grad[0, :, 1, 1] == 0)  # the unlabelled pixel gets no gradient
    changed = [row[:] for row in LOGITS]
    changed[3] = [9.0, -5.0, 0.0]  # another prediction at the unlabelled pixel
    x2, t2 = batch(changed)
    assert value(loss(x2, t2)) == pytest.approx(value(ref), abs=1e-7)


@pytest.mark.parametrize("make", ALL_LOSSES)
def test_all_ignore_batch_is_zero_with_a_gradient(make):
    x, t = batch(target=[255] * 4)
    loss = make()(x, t)
    assert value(loss) == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------- selection
def test_selection_share_ramps_linearly_to_keep():
    sel = SmallLossSelection(keep=0.6, ramp_fraction=0.5)
    shares = []
    for progress in (0.0, 0.25, 0.5, 1.0):
        sel.set_progress(progress)
        shares.append(sel.share())
    assert shares == pytest.approx([1.0, 0.8, 0.6, 0.6])
    conf = SmallLossSelection(mode="confident", threshold=0.8, ramp_fraction=0.5)
    thresholds = []
    for progress in (0.0, 0.25, 0.5, 1.0):
        conf.set_progress(progress)
        thresholds.append(conf.current_threshold())
    assert thresholds == pytest.approx([0.0, 0.4, 0.8, 0.8])
    with pytest.raises(ValueError, match="1.5"):
        sel.set_progress(1.5)


def _ce(p, y):
    return -math.log(p[y])


# five labelled pixels, CE losses in the order 3 < 0 < 4 < 1 < 2 (pixel 2: a confidently "wrong"
# label, the noisy one), the sixth unlabelled with a prediction whose CE at class 0 would be tiny
SEL_LOGITS = [[2.0, 0.0], [0.0, 0.0], [5.0, -3.0], [4.0, 0.0], [0.5, 0.0], [9.0, -9.0]]
SEL_TARGET = [0, 1, 1, 0, 0, 255]


@pytest.mark.parametrize(("keep", "kept"), [(1.0, [0, 1, 2, 3, 4]), (0.6, [3, 0, 4]), (0.5, [3, 0]), (0.1, [3])])
def test_small_loss_selection_drops_the_highest_loss_pixels(keep, kept):
    losses = [_ce(softmax(v), y) for v, y in zip(SEL_LOGITS[:5], SEL_TARGET[:5])]
    assert sorted(range(5), key=lambda i: losses[i]) == [3, 0, 4, 1, 2]  # the case is what it says
    sel = SmallLossSelection(keep=keep, ramp_fraction=0.0)
    x, t = batch(SEL_LOGITS, SEL_TARGET)
    expected = sum(losses[i] for i in kept) / len(kept)  # floor(keep * 5) pixels, at least 1
    assert value(sel(x, t)) == pytest.approx(expected, **CLOSE)


def test_selection_before_the_ramp_keeps_every_labelled_pixel():
    sel = SmallLossSelection(keep=0.2, ramp_fraction=0.5)  # progress 0: share 1
    x, t = batch(SEL_LOGITS, SEL_TARGET)
    assert value(sel(x, t)) == pytest.approx(loop_mean(_ce, SEL_LOGITS, SEL_TARGET), **CLOSE)
    sel.set_progress(0.25)  # share 0.6: 3 of 5
    expected = loop_mean(_ce, [SEL_LOGITS[i] for i in (3, 0, 4)], [0, 0, 0])
    assert value(sel(x, t)) == pytest.approx(expected, **CLOSE)


def test_confident_selection_keeps_pixels_with_p_y_at_least_threshold():
    probs = [softmax(v)[y] for v, y in zip(SEL_LOGITS, SEL_TARGET) if y != 255]
    sel = SmallLossSelection(mode="confident", threshold=0.6, ramp_fraction=0.0)
    kept = [i for i, p in enumerate(probs) if p >= 0.6]
    assert kept == [0, 3, 4]
    x, t = batch(SEL_LOGITS, SEL_TARGET)
    expected = sum(-math.log(probs[i]) for i in kept) / len(kept)
    assert value(sel(x, t)) == pytest.approx(expected, **CLOSE)


def test_selection_ranks_the_criterion_and_averages_with_its_class_weights():
    w = [1.0, 3.0]
    crit = GeneralizedCE(0.5, class_weights=w)
    gce = [(1 - softmax(v)[y] ** 0.5) / 0.5 for v, y in zip(SEL_LOGITS[:5], SEL_TARGET[:5])]
    order = sorted(range(5), key=lambda i: gce[i])[:4]  # keep 0.8 of 5: labels 0 and 1 among them
    assert {SEL_TARGET[i] for i in order} == {0, 1}
    expected = sum(w[SEL_TARGET[i]] * gce[i] for i in order) / sum(w[SEL_TARGET[i]] for i in order)
    x, t = batch(SEL_LOGITS, SEL_TARGET)
    assert value(SmallLossSelection(crit, keep=0.8, ramp_fraction=0.0)(x, t)) == pytest.approx(expected, **CLOSE)


# ----------------------------------------------------------------------------- Dice
def test_with_dice_is_the_weighted_sum_of_its_parts():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0] = 255
    inner = GeneralizedCE(0.7)
    dice = DiceLoss(mode="multiclass", from_logits=True, ignore_index=255)(logits, target)
    expected = 0.3 * inner(logits, target) + 2.0 * dice
    assert value(WithDice(inner, loss_weight=0.3, dice_weight=2.0)(logits, target)) == pytest.approx(value(expected))
    assert value(dice) > 0.1  # Dice is a real part of the sum


def test_with_dice_passes_progress_on():
    sel = SmallLossSelection(keep=0.5, ramp_fraction=1.0)
    WithDice(sel).set_progress(0.5)
    assert sel.progress == 0.5 and sel.share() == pytest.approx(0.75)
    WithDice(SymmetricCE()).set_progress(0.5)  # a loss without progress: nothing to pass on


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: LabelSmoothingCE(1.0), "smoothing=1.0"),
        (lambda: SymmetricCE(0.0, 0.0), "alpha=0.0"),
        (lambda: SymmetricCE(log_zero=0.0), "log_zero=0.0"),
        (lambda: GeneralizedCE(0.0), "q=0.0"),
        (lambda: BootstrappingCE(1.2), "beta=1.2"),
        (lambda: BootstrappingCE(mode="medium"), "'medium'"),
        (lambda: SmallLossSelection(mode="largest"), "'largest'"),
        (lambda: SmallLossSelection(keep=0.0), "keep=0.0"),
        (lambda: SmallLossSelection(ramp_fraction=2.0), "ramp_fraction=2.0"),
        (lambda: WithDice(GeneralizedCE(ignore_index=0)), "ignore_index=255"),
        (lambda: GeneralizedCE(class_weights=[1.0, -1.0]), "class_weights"),
    ],
)
def test_bad_arguments_name_the_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ----------------------------------------------------------------------------- task wiring
def _task(loss_node: dict, **init_args):
    return instantiate({
        "class_path": "noisyseg.tasks.SegmentationTask",
        "init_args": {"num_classes": 2, "augment": False, "channels_last": False, **init_args, "loss": loss_node},
    })


def test_task_built_from_config_trains_on_the_given_loss(one_thread):
    task = _task({"class_path": "noisyseg.losses.robust.GeneralizedCE", "init_args": {"q": 0.5}})
    assert isinstance(task.loss_fn, GeneralizedCE) and task.loss_fn.q == 0.5
    assert "loss" not in task.hparams  # a module in hparams would not load weights-only
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 2, (2, 32, 32))
    task.train()
    got = task.training_step({IMAGE: x, MASK: y}, 0)
    logits = task(x)  # train mode: batch statistics, the same output as inside training_step
    assert value(got) == pytest.approx(value(GeneralizedCE(0.5)(logits, y)), rel=1e-5)
    assert value(got) != pytest.approx(value(CEDiceLoss()(logits, y)), rel=1e-3)


def test_task_rejects_builtin_loss_options_beside_a_loss():
    node = {"class_path": "noisyseg.losses.robust.SymmetricCE"}
    with pytest.raises(ValueError, match="class_weights=\\[1.0, 2.0\\]"):
        _task(node, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="dice_weight=0"):
        _task(node, dice_weight=0)
    with pytest.raises(ValueError, match="ignore_index=0"):
        _task(node, ignore_index=0)


def test_fit_passes_the_step_fraction_to_set_progress(one_thread):
    task = _task({
        "class_path": "noisyseg.losses.robust.WithDice",
        "init_args": {"loss": {"class_path": "noisyseg.losses.robust.SmallLossSelection",
                               "init_args": {"keep": 0.5, "ramp_fraction": 1.0}}},
    })
    sel = task.loss_fn.loss
    seen: list[float] = []
    original = sel.set_progress
    sel.set_progress = lambda f: (seen.append(f), original(f))  # type: ignore[method-assign]
    dm = DataModule(train=VTSSegmentation("train", length=4, size=32), batch_size=2)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, precision="32-true")
    trainer.fit(task, datamodule=dm)
    assert seen == [0.0, 0.5]  # global_step / estimated_stepping_batches before steps 0 and 1
    assert sel.share() == pytest.approx(0.75)



def _docstring_config(tmp_path) -> dict:
    """The YAML snippet of robust.py's docstring as a whole tiny config: 1 step on 4 VTS tiles of 32 px."""
    import yaml

    import noisyseg.losses.robust as robust

    model = yaml.safe_load(robust.__doc__.split("::", 1)[1])["model"]
    model["init_args"].update(num_classes=2, augment=False)
    data = {"class_path": "noisyseg.data.DataModule", "init_args": {"batch_size": 2, "train": {
        "class_path": "noisyseg.data.VTSSegmentation", "init_args": {"split": "train", "length": 4, "size": 32}}}}
    trainer = {"max_steps": 1, "enable_progress_bar": False, "logger": False, "precision": "32-true",
               "default_root_dir": str(tmp_path / "run")}
    return {"seed_everything": 0, "trainer": trainer, "model": model, "data": data}


def test_cli_parses_the_docstring_loss_config(tmp_path, one_thread):
    import yaml

    from noisyseg.cli import main

    path = tmp_path / "robust.yaml"
    path.write_text(yaml.safe_dump(_docstring_config(tmp_path)))
    assert main(["fit", "--config", str(path)]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]["init_args"]["loss"]
    selection = saved["init_args"]["loss"]
    assert selection["class_path"] == "noisyseg.losses.SmallLossSelection" and selection["init_args"]["keep"] == 0.8
    # defaults filled in from SymmetricCE's signature: the node was parsed as that class, not passed as a dict
    assert selection["init_args"]["criterion"]["init_args"]["log_zero"] == -4.0


def test_run_config_resumes_a_robust_loss_run_weights_only(tmp_path, one_thread):
    """The studies' path (instantiate + run_config) reads last.ckpt weights-only on resume: a loss
    module pickled into the task's hyperparameters would be refused there."""
    from noisyseg.runfiles import load_checkpoint_safely
    from noisyseg.cli import run_config

    cfg = _docstring_config(tmp_path)
    run = run_config(cfg, quiet=True)
    assert isinstance(run["model"].loss_fn.loss, SmallLossSelection)
    cfg["trainer"]["max_steps"] = 2
    run_config(cfg, quiet=True, ckpt_path="last")
    assert load_checkpoint_safely(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 2
