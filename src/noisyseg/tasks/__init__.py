"""Lightning tasks: they wire the parts handed to them (data -> transforms -> models -> losses).

* :class:`SegmentationTask` — noisy-label supervised pretraining (Liu et al.) and transfer.
* :class:`MoCoTask` — MoCo v2 with temporal / noisy positive pairs; FALSE via ``false_negative``.
* :class:`SimCLRTask` — SimCLR (NT-Xent over 2N views); FALSE's own base, via ``false_negative``.
* :class:`DINOTask` — DINO for ResNet encoders, multi-crop.
* :class:`DenseContrastTask` — within-/cross-image supervised pixel contrast (Zhao et al.).
"""

from noisyseg.tasks.base import BaseTask
from noisyseg.tasks.dense import DenseContrastTask
from noisyseg.tasks.dino import DINOTask
from noisyseg.tasks.moco import MoCoTask
from noisyseg.tasks.segmentation import SegmentationTask
from noisyseg.tasks.simclr import SimCLRTask

__all__ = ["BaseTask", "DINOTask", "DenseContrastTask", "MoCoTask", "SegmentationTask", "SimCLRTask"]
