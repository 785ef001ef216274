"""In-plane resize of a batch of slices in torch, equal to the SciPy resize it replaced.

Linear interpolation with pixel centres aligned as in
``skimage.transform.resize`` (input coordinate ``(i + 0.5) * scale - 0.5``,
edge values held beyond the border) after a Gaussian anti-aliasing filter
(sigma ``(scale - 1) / 2``, truncated at 4 sigma, edges held) along every axis
that shrinks. Like ``scipy.ndimage`` it computes in float64 and rounds to
float32 after each pass, so the result matches ``gaussian_filter`` +
``affine_transform(order=1, mode="nearest")`` to the last float32 bit on all
but rare ties, on the CPU and on a GPU alike.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from napari_metseg.torchprep.chunks import slice_chunks

#: Gaussian kernel radius in sigmas (``scipy.ndimage.gaussian_filter``'s ``truncate``).
TRUNCATE = 4.0


def resize(stack: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Resize every slice of ``(N, H, W)`` to float32 ``(N, rows, cols)`` on its device."""
    if stack.ndim != 3:
        raise ValueError(f"a stack of slices (n, rows, cols) is needed, got {tuple(stack.shape)}")
    if rows < 1 or cols < 1:
        raise ValueError(f"target slice size must be positive, got {rows} x {cols}")
    stack = stack.float()
    count, in_rows, in_cols = stack.shape
    if (in_rows, in_cols) == (rows, cols):
        return stack.clone()
    out = torch.empty((count, rows, cols), dtype=torch.float32, device=stack.device)
    pixels = max(in_rows * in_cols, rows * cols)
    for chunk in slice_chunks(count, pixels, stack.device):
        part = stack[chunk]
        for axis, scale in ((1, in_rows / rows), (2, in_cols / cols)):
            if scale > 1.0:
                part = gaussian_blur(part, (scale - 1.0) / 2.0, axis)
        resized = F.interpolate(part.double()[:, None], size=(rows, cols), mode="bilinear")
        out[chunk] = resized[:, 0]
    return out


def gaussian_blur(stack: torch.Tensor, sigma: float, axis: int) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter1d(mode="nearest")`` along ``axis``, float64 inside."""
    radius = int(TRUNCATE * sigma + 0.5)
    if radius == 0:
        return stack.float()
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    taps = (phi / phi.sum()).tolist()[radius:]
    data = stack.double()
    length = data.shape[axis]
    first = data.narrow(axis, 0, 1)
    last = data.narrow(axis, length - 1, 1)
    padded = torch.cat([first] * radius + [data] + [last] * radius, dim=axis)
    out = data * taps[0]
    for offset in range(radius, 0, -1):  # outermost first, as scipy sums
        ahead = padded.narrow(axis, radius + offset, length)
        behind = padded.narrow(axis, radius - offset, length)
        out += (behind + ahead).mul_(taps[offset])
    return out.float()
