"""Readers and writers: single volumes, dataset layouts, resampling, NIfTI output.

``read_volume`` reads one file (NIfTI, NRRD, MetaImage, DICOM series folder)
into internal order; ``read_case`` finds the sequences of a case in a folder
(our own names, BraTS-METS, nnU-Net raw, BrainMetShare) and resamples them onto
one reference grid; ``write_volume`` writes results back on the source grid.
"""

from __future__ import annotations

from napari_metseg.io.writer import write_volume

__all__ = ["write_volume"]
