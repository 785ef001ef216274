"""The sequence-dropout 2.5D DeepLabv3: configuration, architectures, dropout, files."""

from napari_metseg.model.architecture import MetsegNet, build_model
from napari_metseg.model.config import (
    BACKBONES,
    INTEGRATIONS,
    LIGHT_BACKBONE,
    OUTPUT_STRIDES,
    SHARINGS,
    ModelConfig,
)
from napari_metseg.model.dropout import apply_presence, sequence_dropout
from napari_metseg.model.files import (
    default_model_path,
    load_model,
    read_model_config,
    read_model_description,
    save_model,
)
from napari_metseg.model.heads import DECODERS, Features

__all__ = [
    "BACKBONES",
    "DECODERS",
    "Features",
    "INTEGRATIONS",
    "LIGHT_BACKBONE",
    "OUTPUT_STRIDES",
    "SHARINGS",
    "MetsegNet",
    "ModelConfig",
    "apply_presence",
    "build_model",
    "default_model_path",
    "load_model",
    "read_model_config",
    "read_model_description",
    "save_model",
    "sequence_dropout",
]
