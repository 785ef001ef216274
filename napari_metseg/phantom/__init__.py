"""A realistic synthetic brain-metastasis case generator.

Anatomy from nilearn's bundled MNI152 2009 template (no download); four
sequences (``bravo``, ``cube_pre``, ``cube_post``, ``flair``) synthesised from
tissue classes, with metastases, oedema, enhancing vessels, T1-bright mimics,
bias fields, noise and misregistration; deterministic per seed. It is the
training and demo data of the project.
"""

from napari_metseg.phantom.generate import (
    CONTRASTS,
    Phantom,
    PhantomConfig,
    generate_phantom,
    make_phantom,
    write_phantom,
)
from napari_metseg.phantom.objects import Lesion
from napari_metseg.phantom.randomise import randomised

__all__ = [
    "CONTRASTS",
    "Lesion",
    "Phantom",
    "PhantomConfig",
    "generate_phantom",
    "make_phantom",
    "randomised",
    "write_phantom",
]
