"""Evaluation: the paper's camera/object sets (``evalsets``), the driver that generates and
scores them (``evaluate``), and the metrics (``metrics``: FID, FVD, CamMC/ObjMC)."""
