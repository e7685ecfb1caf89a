"""brainvq: VQ-VAE + PixelCNN generative models of brain MRI slices, from data to figures.

Python API::

    import brainvq
    run = brainvq.load_run("runs/oasis")                 # config, VQ-VAE and prior from checkpoints
    codes = run.vqvae.encode(images)                      # Codes(bottom (B, 64, 64), top (B, 16, 16) or None)
    result = brainvq.sample(run, 16, seed=0)              # 16 new slices, fast exact sampler
    result.images                                         # (16, 1, 256, 256) in [0, 1]
"""

from importlib.metadata import PackageNotFoundError, version

from brainvq.config import Config, load_config
from brainvq.runs import LoadedRun, load_run
from brainvq.sampling import SampleResult, sample, sample_codes

try:
    __version__ = version("brainvq")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0.1.0"
__all__ = [
    "Config",
    "LoadedRun",
    "SampleResult",
    "__version__",
    "load_config",
    "load_run",
    "sample",
    "sample_codes",
]
