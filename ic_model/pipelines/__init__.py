"""Sampling: the Image Conductor pipeline with camera-free guidance (``image_conductor``),
one request to files (``generate``), and personalised SD 1.5 bases (``personalize``)."""
