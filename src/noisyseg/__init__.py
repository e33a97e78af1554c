"""noisyseg: pretrain remote-sensing segmentation encoders on cheap, noisy supervision."""

__version__ = "0.1.0"
