"""PixelNet: PixelCNN-style autoregressive image generation.

The package is a library (data sources, model, likelihood, samplers, training,
evaluation) with a thin Typer CLI on top (`pixelnet.cli`), which the DVC
pipeline stages call.
"""

__version__ = "0.1.0"
