"""Stage D: training examples from episode records, and LoRA training of the students.

``lora.train_lora`` trains in-process; ``launch.launch_training`` runs it under ``accelerate launch``
with a shipped config (``accelerate_configs``: cpu, multi-cpu, 1gpu, ddp, fsdp), whose launch over one
or several machines ``launch_plan`` builds, or a config file of the user's own, passed unchanged;
``replicas`` holds what the processes of one training agree on.
"""
