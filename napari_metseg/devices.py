"""The compute devices a user may name, and what ``auto`` picks.

Every ``--device`` option, the training configuration and the GUI's device
list offer :data:`DEVICES`; :func:`resolve_device` is the one place that turns
a name into a ``torch.device`` (CUDA, else Apple MPS, else the CPU for
``auto``) and refuses a device PyTorch cannot find. torch is imported inside
the functions, so a CLI parser can offer :data:`DEVICES` without loading it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from napari_metseg.errors import DeviceError

if TYPE_CHECKING:
    import torch

#: Device names offered everywhere; ``auto`` first (the default).
DEVICES: tuple[str, ...] = ("auto", "cuda", "mps", "cpu")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA, else Apple MPS, else CPU; an explicit name is checked.

    Raises :class:`DeviceError` (also a ``ValueError``) for a device PyTorch
    cannot find.
    """
    import torch

    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise DeviceError(f"unknown device {device!r}: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device 'cuda' was asked for, but PyTorch finds no CUDA device")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("device 'mps' was asked for, but PyTorch finds no Apple MPS device")
    return device


def device_available(name: str) -> bool:
    """Whether PyTorch finds the device ``name`` (``auto`` and ``cpu`` always)."""
    import torch

    if name == "cuda":
        return torch.cuda.is_available()
    if name == "mps":
        return torch.backends.mps.is_available()
    return True
