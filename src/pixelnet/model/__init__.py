"""Plain-PyTorch model code: masks, layers and networks. No I/O, devices or logging."""

from pixelnet.model.gated import GatedPixelCNN
from pixelnet.model.layers import scale_input
from pixelnet.model.pixelcnn import MODEL_PARAM_KEYS, ModelConfig, PixelCNN, build_model, resolve_conditional

__all__ = ["MODEL_PARAM_KEYS", "GatedPixelCNN", "ModelConfig", "PixelCNN", "build_model", "resolve_conditional", "scale_input"]
