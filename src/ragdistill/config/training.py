"""Stage D: which episodes become training sets, and how a student is trained on them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ragdistill.config.base import StrictModel


class TrainingLaunch(StrictModel):
    """Where the training processes run (``training.launch``): how many machines, which one this is, where
    they meet, processes on each. Where and how only: it reaches the run context, never an identity.

    It shapes the launch the project builds for a shipped accelerate config (``training.launch`` builds
    accelerate's own arguments, with totals over all machines); a user's accelerate file decides these
    itself and reaches ``accelerate launch`` unchanged. A setting left unset is taken from the environment
    a cluster scheduler sets for one launch per machine (``from_environment``), else its default."""

    num_machines: int | None = Field(
        None,
        gt=0,
        description="Machines training together, each running one launch (None: WORLD_SIZE, else 1).",
    )
    machine_rank: int | None = Field(
        None,
        ge=0,
        description="This machine's number, 0 to num_machines - 1; machine 0 writes the adapter and the "
        "manifest (None: NODE_RANK, else RANK, else 0).",
    )
    main_process_ip: str | None = Field(
        None,
        min_length=1,
        description="The address of machine 0, where the processes meet (None: MASTER_ADDR; needed with "
        "several machines).",
    )
    main_process_port: int | None = Field(
        None,
        gt=0,
        le=65535,
        description="The port on machine 0 where the processes meet (None: MASTER_PORT, else 29500 with "
        "several machines, a free port on one).",
    )
    processes_per_machine: int | None = Field(
        None,
        gt=0,
        description="Training processes on each machine (None: the visible GPUs for ddp/fsdp, 2 for "
        "multi-cpu, 1 for cpu/1gpu).",
    )
    from_environment: bool = Field(
        True,
        description="Fill unset settings from MASTER_ADDR, MASTER_PORT, NODE_RANK (else RANK) and WORLD_SIZE "
        "(the number of launches, one per machine, as Kubeflow's PyTorchJob sets them).",
    )


class TrainingRecipe(StrictModel):
    """LoRA SFT of a student (stage D): the paper's ALFWorld recipe by default, and the accelerate config
    it runs under; everything here is part of the training's identity (``training.launch`` is not)."""

    lora_r: int = Field(64, gt=0)
    lora_alpha: int = Field(128, gt=0)
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    learning_rate: float = Field(2e-4, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(
        None, gt=0, description="Stop after this many optimizer steps (None: `epochs` decides)."
    )
    per_device_batch_size: int = Field(8, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    lr_scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
    ] = "linear"
    max_seq_len: int = Field(
        4096,
        gt=0,
        description="Longer examples keep their first max_seq_len tokens (counted in the result); the dataset "
        "builder should already have fitted them.",
    )
    load_in_4bit: bool = Field(False, description="QLoRA: a 4-bit NF4 base (bitsandbytes, CUDA only).")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto",
        description="auto: on CUDA bf16 mixed precision (fp16 on GPUs without bf16); on a CPU the base weights "
        "in bf16 without autocast where the CPU has native bf16 (AVX512/AMX), else fp32. LoRA weights stay fp32.",
    )
    gradient_checkpointing: bool | None = Field(
        None,
        description="Recompute activations in the backward pass (a half or less of the memory, 10-40% more "
        "time); None: on for CUDA; on a CPU, on when a micro-batch can exceed 2048 tokens (per_device_batch_size "
        "x the longest example), where activations pass ~7 GB on SmolLM2-135M.",
    )
    loss_head: Literal["auto", "trl-fused", "compact"] = Field(
        "auto",
        description="How the LM head scores the loss tokens. trl-fused: TRL's chunked kernel (bounded memory; "
        "on a CPU it scores every position and recomputes the head in the backward pass); compact: the head "
        "and cross-entropy on the assistant tokens only. auto: trl-fused on CUDA, compact on a CPU.",
    )
    torch_threads: int | None = Field(
        None, gt=0, description="CPU: torch intra-op threads (None: OMP_NUM_THREADS or torch's default)."
    )
    dataloader_workers: int = Field(
        0, ge=0, description="Batches are pre-tokenised: 0 (in-process) suffices."
    )
    group_by_length: bool = Field(
        False, description="Batch examples of similar length together (less padding, less random order)."
    )
    logging_steps: int = Field(1, gt=0, description="Optimizer steps per point of the loss curve.")
    save_steps: int = Field(50, gt=0, description="Optimizer steps between checkpoints.")
    save_total_limit: int = Field(2, gt=0, description="Checkpoints kept (the newest ones).")
    resume: bool = Field(True, description="Resume from the newest complete checkpoint in the output folder.")
    tensorboard: bool = Field(True, description="Write TensorBoard logs (needs the tensorboard package).")
    accelerate_config: str = Field(
        "cpu",
        description="A shipped accelerate config (cpu, multi-cpu, 1gpu, ddp, fsdp) or a path to a YAML file, "
        "checked when a run starts (ragdistill.preflight). A file of your own reaches `accelerate launch` "
        "unchanged.",
    )


class TrainingConfig(TrainingRecipe):
    """``training``: the recipe (hashed into the training's identity) and where it runs (``launch``, never
    hashed: the stages receive it through the run context)."""

    launch: TrainingLaunch = Field(default_factory=TrainingLaunch)

    def recipe(self) -> TrainingRecipe:
        """The settings that change the trained adapter (everything but ``launch``)."""
        return TrainingRecipe.model_validate(self.model_dump(exclude={"launch"}))


class DistillConfig(StrictModel):
    """Stage D's data: which teacher's episodes are distilled and which episodes make training examples."""

    teacher: Literal["rag", "expert", "both"] = Field(
        "rag",
        description="rag: the RAG teacher's rollout (the paper); expert: the environment's demonstrations "
        "rendered in the agent's format, with the hints the RAG teacher would retrieve in the prompt (for "
        "models too small to win with hints alone, such as the laptop demo's); both: the two together.",
    )
    expert_limit: int | None = Field(
        None,
        gt=0,
        description="Training tasks the expert teacher demonstrates (balanced over task types); None: the "
        "same tasks as the rollouts (env.limit).",
    )
    max_invalid_actions: int | None = Field(
        None,
        ge=0,
        description="Keep episodes with at most this many invalid-action observations; None: the "
        "environment's default (its profile's default_max_invalid, the paper's filter for it).",
    )
    min_score: float | None = Field(
        None,
        description="Also keep unsuccessful episodes whose score reaches this (WebShop-like rewards, for tiny "
        "models; the report says so when set). None: successes only.",
    )
    overlong: Literal["drop_oldest", "skip"] = Field(
        "drop_oldest",
        description="An episode longer than training.max_seq_len: drop its oldest turns, as inference does, "
        "or skip it (counted in the dataset card).",
    )
