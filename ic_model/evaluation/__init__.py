"""Evaluation: the paper's camera/object sets (``evalsets``), the driver that generates and
scores them (``evaluate``), and the metrics (``metrics``: FID, FVD, CamMC/ObjMC)."""

# `--images`: the first frames an evaluation may start from instead of synthetic ones.
FIRST_FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
