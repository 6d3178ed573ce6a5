"""The trajectory studio: draw trajectories on an image in the browser and generate a video.

``model_view`` and ``drawing`` are plain Python (the image as the model sees it, the clicked
tracks and their JSON); ``generation`` runs a request through the `generate` Prefect flow and
measures ObjMC/CamMC; ``app`` is the Gradio page. Start it with ``ic studio --run RUN``.
"""
