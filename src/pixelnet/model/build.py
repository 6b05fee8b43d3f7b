"""build_model: the one constructor every command uses, from a ModelConfig."""

from __future__ import annotations

from torch import nn

from pixelnet.model.config import ModelConfig
from pixelnet.model.gated import GatedPixelCNN
from pixelnet.model.pixelcnn import PixelCNN
from pixelnet.model.pixelcnnpp import PixelCNNPP

ARCHITECTURES: dict[str, type[nn.Module]] = {"pixelcnn": PixelCNN, "gated": GatedPixelCNN, "pixelcnnpp": PixelCNNPP}


def build_model(config: ModelConfig) -> nn.Module:
    """The network `config` describes, with fresh weights."""
    return ARCHITECTURES[config.arch](config)
