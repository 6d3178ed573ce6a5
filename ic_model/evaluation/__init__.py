"""Evaluation: the paper's camera/object sets (``evalsets``), the driver that generates and
scores them (``evaluate``), and the metrics (``metrics``: FID, FVD, CamMC/ObjMC)."""

from ic_data.images import IMAGE_SUFFIXES

# `--images`: the first frames an evaluation may start from instead of synthetic ones (every
# format generation reads).
FIRST_FRAME_SUFFIXES = IMAGE_SUFFIXES
