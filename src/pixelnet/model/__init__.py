"""Plain-PyTorch model code: masks, layers and networks. No I/O, devices or logging."""

from pixelnet.model.pixelcnn import MODEL_PARAM_KEYS, ModelConfig, PixelCNN, build_model, scale_input

__all__ = ["MODEL_PARAM_KEYS", "ModelConfig", "PixelCNN", "build_model", "scale_input"]
