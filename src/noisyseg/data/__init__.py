"""Data: the sample contract, synthetic VTS scenes, label noise, real-data loaders, the DataModule."""

from noisyseg.data.datamodule import DataModule
from noisyseg.data.label_noise import LabelNoise, apply_noise, noise_rate
from noisyseg.data.sample import IGNORE_INDEX, collate, make_sample
from noisyseg.data.vts import VTSPairs, VTSSegmentation

__all__ = [
    "IGNORE_INDEX",
    "DataModule",
    "LabelNoise",
    "VTSPairs",
    "VTSSegmentation",
    "apply_noise",
    "collate",
    "make_sample",
    "noise_rate",
]
