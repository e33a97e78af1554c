"""DenseContrastTask wiring: the labels handed to the loss lie on the same grid as the features.

The dense losses and ``downsample_labels`` are tested alone in ``tests/losses/test_dense.py``; here
the question is which label map each view's features are paired with after augmentation. The images
encode their own labels (band 0 = label, band 1 = label squared), so the view the encoder actually
saw says which label each pixel must carry: with photometric augmentation off, a pixel of a view
whose band 0 is an integer and band 1 its square was not blended across a label edge by the
bilinear crop, and the nearest-warped mask of that view must hold that integer there. The loss's
labels are then compared with the view downsampled to the feature grid with nearest sampling,
as the features are (Zhao et al., ICCV 2021: labels resized to the feature map, nearest).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from noisyseg.tasks import DenseContrastTask
from noisyseg.transforms.batch import ContrastiveView

B, SIZE, S, BLOCK, CLASSES = 4, 32, 8, 8, 4


def block_labels(seed: int) -> torch.Tensor:
    """``[B, SIZE, SIZE]`` labels constant on BLOCK x BLOCK squares (random class per square)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, CLASSES, (B, SIZE // BLOCK, SIZE // BLOCK), generator=g)
    return coarse.repeat_interleave(BLOCK, 1).repeat_interleave(BLOCK, 2)


def encode(labels: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]`` labels -> ``[B, 3, H, W]`` image: label, label squared, minus label.

    A bilinear blend of different labels a, b (weights w, 1 - w, 0 < w < 1) has band 1 greater
    than band 0 squared (strict convexity), so blended pixels are recognised.
    """
    x = labels.float()
    return torch.stack([x, x * x, -x], dim=1)


def unblended(view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``view [B, 3, h, w]`` -> (pixels that hold one label exactly ``[B, h, w]``, that label)."""
    c0, c1 = view[:, 0], view[:, 1]
    label = c0.round()
    clean = ((c0 - label).abs() < 1e-4) & ((c1 - c0 * c0).abs() < 1e-3)
    return clean, label.long()


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")  # training_step without a Trainer
@pytest.mark.parametrize("mode, partner", [("within", True), ("cross", True), ("within", False)])
def test_loss_labels_are_each_views_mask_on_the_feature_grid(one_thread, mode: str, partner: bool) -> None:
    torch.manual_seed(0)
    task = DenseContrastTask(mode=mode, feature_size=S, proj_dim=16, channels_last=False).train()
    # geometry only: photometric ops would change the pixel values that encode the labels
    task.view = ContrastiveView(scale=task.view.scale, jitter=0.0, grey_p=0.0, blur_p=0.0)
    inputs, outputs, loss_args = [], [], []
    embed = task.embed

    def record_embed(x: torch.Tensor) -> torch.Tensor:
        inputs.append(x.detach().clone())
        outputs.append(embed(x))
        return outputs[-1]

    task.embed = record_embed
    task.loss_fn.register_forward_hook(lambda m, args, out: loss_args.append(args))
    mask = block_labels(1)
    batch = {"image": encode(mask), "mask": mask}
    if partner:
        mask2 = block_labels(2)
        batch.update(image2=encode(mask2), mask2=mask2)

    loss = task.training_step(batch, 0)

    assert torch.isfinite(loss) and len(inputs) == 2 and len(loss_args) == 1
    z1, z2, l1, l2 = loss_args[0]
    assert z1 is outputs[0] and z2 is outputs[1]  # features of view 1, then view 2
    for view, labels in ((inputs[0], l1), (inputs[1], l2)):
        assert labels.shape == (B, S, S) and labels.dtype == torch.int64
        on_grid = F.interpolate(view, size=(S, S), mode="nearest")  # [B, 3, S, S] the pixels the labels take
        clean, expected = unblended(on_grid)
        assert clean.float().mean() > 0.5  # most grid pixels are inside a label square
        torch.testing.assert_close(labels[clean], expected[clean], rtol=0, atol=0)
    # the two views really differ, so pairing a view with the other view's mask would be seen
    assert not torch.equal(inputs[0], inputs[1])
