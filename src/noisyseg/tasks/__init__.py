"""Lightning tasks: they wire the parts handed to them (data -> transforms -> models -> losses)."""

from noisyseg.tasks.base import BaseTask
from noisyseg.tasks.segmentation import SegmentationTask

__all__ = ["BaseTask", "SegmentationTask"]
