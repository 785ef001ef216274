"""Pre- and post-processing in torch, on the model's device (CPU or GPU).

:mod:`~napari_metseg.torchprep.clahe` and :mod:`~napari_metseg.torchprep.resize`
reproduce the method's scikit-image / SciPy steps on batches of slices, so a
whole case is equalised and resized where the network runs.
"""
