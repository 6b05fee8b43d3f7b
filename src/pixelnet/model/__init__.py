"""Plain-PyTorch model code: masks, layers, networks and their likelihood. No I/O, devices or logging.

    config.py      ModelConfig: params.yaml's model section resolved, plus the data's facts
    build.py       build_model, the one constructor every command uses
    masks.py       autoregressive masks over raster order and colour channels
    layers.py      masked convolutions, the residual block, input scaling, row and column shifts
    distributions.py  the output distributions over intensities: softmax, discretized logistic mixture
    pixelcnn.py    PixelCNN
    gated.py       Gated PixelCNN
    pixelcnnpp.py  PixelCNN++: shifted-conv streams over resolution levels, U-Net short-cuts, dropout
    likelihood.py  cross-entropy, bits/dim, the NLL of image sets

Importing the package loads only ModelConfig, not the networks.
"""

from pixelnet.model.config import ModelConfig

__all__ = ["ModelConfig"]
