"""Exceptions the core raises.

Every error a user can cause derives from :class:`MetsegError`, so the GUI can
turn it into a notification and the CLI into one line and a non-zero exit code,
while genuine bugs still surface as tracebacks.
"""

from __future__ import annotations


class MetsegError(Exception):
    """Base class of all user-facing errors of napari-metseg."""


class ReadError(MetsegError):
    """A file or folder could not be read as an MR volume or case."""


class GeometryError(MetsegError):
    """Images that should share a space do not (no overlap, bad affine, 2D data)."""


class SequenceError(MetsegError):
    """A sequence mapping or presence vector is invalid (unknown name, none present)."""


class ModelFileError(MetsegError):
    """A model file is missing, corrupt, or does not match its configuration."""


class DeviceError(MetsegError, ValueError):
    """The requested compute device does not exist on this machine."""


class Cancelled(MetsegError):
    """Long work stopped because the user asked for it (not a failure)."""


class CorrectionError(MetsegError):
    """Corrections that cannot drive fine-tuning (nothing marked), or a round refused."""


class RunawayError(CorrectionError):
    """A fine-tuning round would change the prediction far from the strokes beyond the bound.

    The model is left as it was; the message says how much lesion the round
    would have added and how to continue.
    """


class WorkspaceError(MetsegError):
    """A correction workspace folder is unusable (unreadable state, wrong case, unknown version)."""
