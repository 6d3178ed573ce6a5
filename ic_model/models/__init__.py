"""The networks: codec (``codec``), denoiser assembly (``components``), the motion ControlNet
(``motion_controlnet``), camera/object LoRA (``lora``), first-frame attention
(``frame_attention``), the presets' builders (``tiny``, ``sd15`` and ``presets.build_components``),
the released Image Conductor weights' converter (``official``), the CLIP tokenizer
(``tokenizer``) and the reading of a run's weight files (``files``)."""
