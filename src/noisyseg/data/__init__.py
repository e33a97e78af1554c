"""Data: the sample contract, synthetic VTS scenes, label noise, real-data loaders, the DataModule."""

from noisyseg.data.label_noise import LabelNoise, apply_noise, noise_rate
from noisyseg.data.loading import IGNORE_INDEX, DataModule, collate, make_sample
from noisyseg.data.product_noise import NoisyLabels
from noisyseg.data.products import PRODUCT_TABLES, ProductLabels
from noisyseg.data.raster import RasterSegmentation
from noisyseg.data.shards import StreamingShards
from noisyseg.data.splits import ConcatSources, TileSplit
from noisyseg.data.temporal import BitemporalPairs, LandsatChange, TemporalStacks
from noisyseg.data.torchgeo_source import TorchGeoSource
from noisyseg.data.vector import VectorLabels
from noisyseg.data.vts import VTSPairs, VTSSegmentation
from noisyseg.data.xbd import XBDPairs, XBDSegmentation

__all__ = [
    "IGNORE_INDEX",
    "PRODUCT_TABLES",
    "BitemporalPairs",
    "ConcatSources",
    "DataModule",
    "LabelNoise",
    "LandsatChange",
    "NoisyLabels",
    "ProductLabels",
    "RasterSegmentation",
    "StreamingShards",
    "TemporalStacks",
    "TileSplit",
    "TorchGeoSource",
    "VTSPairs",
    "VTSSegmentation",
    "VectorLabels",
    "XBDPairs",
    "XBDSegmentation",
    "apply_noise",
    "collate",
    "make_sample",
    "noise_rate",
]
