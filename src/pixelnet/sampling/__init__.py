"""Generation, pixel by pixel: the naive reference sampler and the exact cached one.

    naive.py     the noise, and one full forward pass per sub-pixel (the reference)
    fast.py      the cached engine: sample_fast and complete, over an architecture's incremental form
    pixelcnn.py  the incremental form of PixelCNN
    gated.py     the incremental form of Gated PixelCNN
    pixelcnnpp.py  the incremental form of PixelCNN++: row and position caches over resolution levels
    fold.py      BatchNorm folded into the conv before it

Both samplers draw the same images from the same noise (tests/test_fast_sampling.py).
"""

from pixelnet.sampling.fast import complete, sample_fast
from pixelnet.sampling.naive import sample_labels, sample_naive, sampling_noise

__all__ = ["complete", "sample_fast", "sample_labels", "sample_naive", "sampling_noise"]
