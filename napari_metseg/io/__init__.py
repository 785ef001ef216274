"""Readers and writers: single volumes, dataset layouts, resampling, NIfTI output.

``read_volume`` reads one file (NIfTI, NRRD, MetaImage, DICOM series folder)
into internal order; ``read_case`` finds the sequences of a case in a folder
(our own names, BraTS-METS, nnU-Net raw, BrainMetShare, DICOM series) and
resamples them onto one reference grid; ``write_volume`` writes results back
on the source grid.
"""

from __future__ import annotations

from napari_metseg.io.formats import read_volume
from napari_metseg.io.layouts import CaseSources, scan_case
from napari_metseg.io.reader import read_case
from napari_metseg.io.volume import Volume
from napari_metseg.io.writer import write_probability, write_volume

__all__ = [
    "CaseSources",
    "Volume",
    "read_case",
    "read_volume",
    "scan_case",
    "write_probability",
    "write_volume",
]
