"""Stage D: training examples from episode records, and LoRA training of the students.

``lora.train_lora`` trains in-process; ``launch.launch_training`` runs it under ``accelerate launch``
with a shipped config (``accelerate_configs``: cpu, 1gpu, ddp, fsdp) or a config file.
"""
