"""Prepare thousands of images for a machine-learning app, on every core.

::

    import allcores.images

    summary = allcores.images.process("photos", "thumbs", size=256)
    print(summary.render())          # done / skipped / failed, images per second
    summary = allcores.images.process("photos", "train", size=224, resize="fill",
                                      dataset="train.npz")   # + one uint8 N x 224 x 224 x 3

Each image is opened, turned upright from its EXIF orientation, converted, resized and written
(under a temporary name, then renamed) to the same relative path under DST. A re-run skips
images whose output is complete; bad images are listed, never fatal. Pillow (and numpy, for
datasets) are needed: ``pip install 'allcores[images]'``. The command line is
``allcores images SRC DST --size 256`` (see ``docs/images.md``).
"""

from __future__ import annotations

from allcores.images._run import FAILURES_FILE, process
from allcores.images._samples import make_samples
from allcores.images._steps import EXTENSION_FORMATS
from allcores.images._summary import ImageFailure, Summary

#: File name endings that are treated as images (case-insensitive).
EXTENSIONS: tuple[str, ...] = tuple(EXTENSION_FORMATS)

__all__ = ["EXTENSIONS", "FAILURES_FILE", "ImageFailure", "Summary", "make_samples", "process"]
