"""Plain-PyTorch model code: masks, layers, networks and their likelihood. No I/O, devices or logging.

Module by module: docs/layout.md. Importing the package loads only ModelConfig, not the networks.
"""

from pixelnet.model.config import ModelConfig

__all__ = ["ModelConfig"]
