"""Model files: safetensors weights plus a JSON description, never pickles.

Two forms hold the same content:

- a directory with ``model.safetensors`` and ``config.json``;
- a single ``.safetensors`` file whose header metadata holds the JSON.

The JSON holds ``format``, ``version`` (of napari-metseg that wrote it),
``model`` (the :class:`ModelConfig`) and ``metadata`` (training provenance,
metrics, parent version...). Loading rebuilds the architecture from the
config and then loads the tensors, so a file can carry no code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from napari_metseg import __version__
from napari_metseg.atomic import atomic_write
from napari_metseg.errors import ModelFileError
from napari_metseg.model.architecture import MetsegNet, build_model, current_state_names
from napari_metseg.model.config import ModelConfig

FORMAT = "napari-metseg-model/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def default_model_path() -> Path:
    """The bundled model shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "models" / "default"


def _resolve(path: str | os.PathLike | None) -> Path:
    if path is None or str(path) == "default":
        return default_model_path()
    return Path(path)


def save_model(
    model: MetsegNet,
    path: str | os.PathLike,
    metadata: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` (its config and ``metadata``) to ``path``; returns the path.

    ``path`` ending in ``.safetensors`` gives a single file, anything else a
    directory. Files appear atomically (written beside, then renamed).
    ``dtype=torch.float16`` halves the file (the bundled model); floating
    tensors are cast back to the model's dtype on loading.
    """
    path = Path(path)
    description = {
        "format": FORMAT,
        "version": __version__,
        "model": model.config.to_dict(),
        "metadata": {**model.metadata, **(metadata or {})},
    }
    text = json.dumps(description, indent=2, default=_json_default)
    tensors = {
        name: _cast(tensor.detach().cpu(), dtype).contiguous()
        for name, tensor in model.state_dict().items()
    }
    if path.suffix == ".safetensors":
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda temp: save_file(tensors, temp, metadata={"napari_metseg": text}))
    else:
        path.mkdir(parents=True, exist_ok=True)
        atomic_write(path / WEIGHTS, lambda temp: save_file(tensors, temp))
        atomic_write(path / CONFIG, lambda temp: Path(temp).write_text(text + "\n"))
    return path


def read_model_description(path: str | os.PathLike | None) -> dict[str, Any]:
    """The JSON description of a model file (config, metadata, version) without weights."""
    path = _resolve(path)
    if path.is_dir():
        config_file = path / CONFIG
        if not config_file.is_file():
            raise ModelFileError(
                f"{path}: not a model (no {CONFIG}); expected {WEIGHTS} + {CONFIG}"
            )
        try:
            description = json.loads(config_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelFileError(f"{config_file}: unreadable model description: {error}") from error
    elif path.is_file():
        try:
            with open(path, "rb") as handle:
                header_size = int.from_bytes(handle.read(8), "little")
                if not 0 < header_size < 100_000_000:
                    raise ValueError("bad safetensors header size")
                header = json.loads(handle.read(header_size))
            description = json.loads(header["__metadata__"]["napari_metseg"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ModelFileError(
                f"{path}: not a napari-metseg model file (safetensors with its description): {error}"
            ) from error
    else:
        raise ModelFileError(f"{path}: no model there")
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise ModelFileError(f"{path}: unknown model format {description.get('format')!r}")
    return description


def read_model_config(path: str | os.PathLike | None) -> ModelConfig:
    """The :class:`ModelConfig` of a model file, without loading weights."""
    description = read_model_description(path)
    try:
        return ModelConfig.from_dict(description["model"])
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFileError(f"{_resolve(path)}: invalid model configuration: {error}") from error


def load_model(
    path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> MetsegNet:
    """Load a model file (``None`` or ``"default"``: the bundled model) in eval mode."""
    path = _resolve(path)
    if path == default_model_path() and not (path / WEIGHTS).is_file():
        raise ModelFileError(f"the bundled model is missing: expected {path / WEIGHTS}")
    description = read_model_description(path)
    config = read_model_config(path)
    weights_file = path / WEIGHTS if path.is_dir() else path
    try:
        tensors = current_state_names(load_file(weights_file))
    except (OSError, SafetensorError, ValueError) as error:
        raise ModelFileError(f"{weights_file}: corrupt weights: {error}") from error
    model = build_model(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        raise ModelFileError(
            f"{weights_file}: weights do not match the configuration "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong_shape[:3]})"
        )
    model.load_state_dict(tensors)
    model.metadata = dict(description.get("metadata", {}))
    model.metadata.setdefault("path", str(path))
    return model.to(device).eval()


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
