"""The method's lesion-candidate threshold, in a module that imports nothing.

The GUI, every CLI parser, the writers, the metrics and fine-tuning's trust
region share this one number (METHOD.md). It lives apart from
:mod:`napari_metseg.lesions` so that a CLI parser can show it as a default
without loading pandas and SciPy; ``lesions`` re-exports it.
"""

#: Probability from which a voxel belongs to a lesion candidate (METHOD.md).
CANDIDATE_THRESHOLD = 0.10
