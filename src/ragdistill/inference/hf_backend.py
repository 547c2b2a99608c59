"""transformers ``generate``: the reference backend, and the one that runs wherever torch does: on the
current CUDA GPU when torch sees one, else on the CPU.

Requests are grouped by what one ``generate`` call must share (adapter and sampling settings) and
run in left-padded batches of ``backend.batch_size``. Decoding is greedy when ``temperature`` is 0.
Stop strings end a sequence early (transformers' ``stop_strings``) and the text is cut before the
first one, with ``finish_reason`` "stop".

``model.quantization: bitsandbytes`` loads the weights in 4 bits (NF4) on a CUDA GPU, as the paper's
re-ranker ran; the vLLM this project pins no longer offers bitsandbytes, so this is the backend that
serves such a role in-process.

No constrained decoding: a request's ``json_schema`` is ignored here, so callers that want JSON must
parse the text tolerantly (the vllm and openai backends do constrain it).

The context window follows the vllm backend, so both serve the same requests the same way: a prompt
of ``model.max_model_len`` tokens or more fails "request" (see
:class:`ragdistill.inference.base.Backend`), and a completion is cut where prompt plus completion fill
the window (``finish_reason`` "length"). When ``generate`` raises for a batch, its requests run again
one at a time, so only the one that fails alone is marked failed ("request").
"""

from __future__ import annotations

import logging
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path
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
from ragdistill.inference.chat import (
    completion_token_count,
    count_chat_tokens,
    encode_chat,
    load_tokenizer,
    render_chat,
    strip_trailing_special,
    truncate_at_stop,
)
from ragdistill.models import resolve_model

log = logging.getLogger(__name__)

GroupKey = tuple[Path | None, int, float, float, int, tuple[str, ...]]


def quantization_options(role: RoleConfig, dtype: Any, on_cuda: bool) -> dict[str, Any]:
    """``from_pretrained``'s quantization arguments for ``role.model.quantization``: for bitsandbytes,
    4-bit NF4 weights with double quantization computed in ``dtype`` (training.load_in_4bit's recipe).
    BackendError, before any weights load, without CUDA or the bitsandbytes package."""
    if role.model.quantization is None:
        return {}
    if not on_cuda:
        raise BackendError(
            f"model.quantization {role.model.quantization!r} ({role.model.name}) needs a CUDA GPU: bitsandbytes "
            "runs its 4-bit weights there only; remove the setting to run the model unquantized here"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise BackendError(
            f"model.quantization {role.model.quantization!r} needs the bitsandbytes package: install the "
            "`gpu` extra (pip install -e '.[gpu]')"
        ) from None
    from transformers import BitsAndBytesConfig

    auto = dtype == "auto"
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=None if auto else dtype,
        )
    }


class HFBackend:
    """Serves one role's model with transformers; peft LoRA adapters switched per batch."""

    name = "hf"

    def __init__(self, role: RoleConfig, model_path: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self._role = role
        if role.backend.torch_threads is not None:
            torch.set_num_threads(role.backend.torch_threads)
        self.model_path = model_path or resolve_model(role.model)
        self._tokenizer = load_tokenizer(self.model_path, role.model.trust_remote_code)
        # count_tokens runs in the rollout engine's thread while generate runs in a stream's thread
        # (inference.streaming); generate switches padding on and off, which a fast tokenizer shared
        # between threads does not survive ("Already borrowed"): counting has a tokenizer of its own.
        self._counting_tokenizer = load_tokenizer(self.model_path, role.model.trust_remote_code)
        self._tokenizer.padding_side = "left"
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        dtypes = {
            "bfloat16": torch.bfloat16,
            "float16": torch.float16,
            "float32": torch.float32,
            "auto": "auto",
        }
        on_cuda = torch.cuda.is_available()
        placement = {"device_map": {"": torch.cuda.current_device()}} if on_cuda else {}
        quantization = quantization_options(role, dtypes[role.model.dtype], on_cuda)
        self._model: Any = AutoModelForCausalLM.from_pretrained(
            self.model_path,
            dtype=dtypes[role.model.dtype],
            trust_remote_code=role.model.trust_remote_code,
            **placement,
            **quantization,
        )
        self._model.eval()
        self._adapters = AdapterRegistry()
        self._loaded: set[Path] = set()
        self._eos_ids = self._end_token_ids()

    def _end_token_ids(self) -> list[int]:
        configured = self._model.generation_config.eos_token_id
        ids = configured if isinstance(configured, list) else [configured]
        ids = [int(token) for token in ids if token is not None]
        if self._tokenizer.eos_token_id is not None and self._tokenizer.eos_token_id not in ids:
            ids.append(int(self._tokenizer.eos_token_id))
        return ids

    def _activate(self, adapter: Path | None) -> Any:
        """Make ``adapter`` the active LoRA (loading it once); a context that disables LoRA for None."""
        if adapter is None:
            return self._model.disable_adapter() if self._loaded else nullcontext()
        name = f"adapter-{self._adapters.id_for(adapter)}"
        if adapter not in self._loaded:
            from peft import PeftModel

            log.info("loading LoRA adapter %s as %s", adapter, name)
            try:
                if self._loaded:
                    self._model.load_adapter(str(adapter), adapter_name=name)
                else:
                    self._model = PeftModel.from_pretrained(self._model, str(adapter), adapter_name=name)
                    self._model.eval()
            except (OSError, RuntimeError, ValueError, KeyError) as error:
                raise BackendError(
                    f"cannot load LoRA adapter {adapter} onto {self.model_path} ({describe_error(error)}); "
                    "name an adapter trained on this base model"
                ) from error
            self._loaded.add(adapter)
        self._model.set_adapter(name)
        return nullcontext()

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        limit = self._role.model.max_model_len
        results: dict[int, Generation] = {}
        groups: dict[GroupKey, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            prompt_tokens = len(encode_chat(self._tokenizer, request.messages))
            if prompt_tokens >= limit:
                results[index] = self._failed(index, prompt_over_window(prompt_tokens, limit), prompt_tokens)
                continue
            adapter = request.adapter
            key: GroupKey = (
                local_adapter_path(adapter) if adapter else None,
                request.max_tokens,
                request.temperature,
                request.top_p,
                request.seed,
                tuple(request.stop),
            )
            groups[key].append(index)
        size = self._role.backend.batch_size
        for key, indexes in groups.items():
            for start in range(0, len(indexes), size):
                results.update(self._generate_chunk(key, indexes[start : start + size], requests))
        return [results[index] for index in range(len(requests))]

    def _generate_chunk(
        self, key: GroupKey, indexes: list[int], requests: list[GenerationRequest]
    ) -> dict[int, Generation]:
        """One ``generate`` call; when it raises, each request alone, so only the culprit fails."""
        try:
            generations = self._generate_batch(key, [requests[i] for i in indexes])
            return dict(zip(indexes, generations, strict=True))
        except BackendError:
            raise
        except (RuntimeError, ValueError) as error:
            if len(indexes) == 1:
                prompt_tokens = len(encode_chat(self._tokenizer, requests[indexes[0]].messages))
                return {indexes[0]: self._failed(indexes[0], describe_error(error), prompt_tokens)}
            log.warning(
                "transformers generate failed on %d requests (%s); running them one at a time",
                len(indexes),
                describe_error(error),
            )
        results: dict[int, Generation] = {}
        for index in indexes:
            results.update(self._generate_chunk(key, [index], requests))
        return results

    def _failed(self, index: int, cause: str, prompt_tokens: int) -> Generation:
        message = f"request {index}: transformers on {self.model_path}: {cause}"
        log.warning("%s (request failure)", message)
        return Generation.failure("request", message, prompt_tokens)

    def _generate_batch(self, key: GroupKey, requests: list[GenerationRequest]) -> list[Generation]:
        import torch

        adapter, max_tokens, temperature, top_p, seed, stops = key
        prompts = [render_chat(self._tokenizer, request.messages) for request in requests]
        encoded = self._tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
        encoded = encoded.to(self._model.device)
        prompt_lengths = [int(length) for length in encoded["attention_mask"].sum(dim=1)]
        rooms = [self._role.model.max_model_len - length for length in prompt_lengths]
        options: dict[str, Any] = {
            "max_new_tokens": min(max_tokens, max(rooms)),
            "pad_token_id": self._tokenizer.pad_token_id,
            "eos_token_id": self._eos_ids,
        }
        if temperature > 0:
            options.update(do_sample=True, temperature=temperature, top_p=top_p)
            torch.manual_seed(seed)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if stops:
            options.update(stop_strings=list(stops), tokenizer=self._tokenizer)
        with self._activate(adapter), torch.inference_mode():
            output = self._model.generate(**encoded, **options)
        prompt_width = encoded["input_ids"].shape[1]
        generations = []
        for row, new_ids in enumerate(output[:, prompt_width:].tolist()):
            ids, ended = self._cut_at_end(new_ids)
            if len(ids) > rooms[row]:  # the window is full: vLLM stops here too
                ids, ended = ids[: rooms[row]], False
            text, stopped = truncate_at_stop(self._tokenizer.decode(ids, skip_special_tokens=True), stops)
            generations.append(
                Generation(
                    text=text,
                    finish_reason="stop" if ended or stopped else "length",
                    prompt_tokens=prompt_lengths[row],
                    completion_tokens=completion_token_count(self._tokenizer, ids, text),
                )
            )
        return generations

    def _cut_at_end(self, ids: list[int]) -> tuple[list[int], bool]:
        """Ids before the first end-of-sequence token (padding follows it), and whether there was one."""
        for position, token in enumerate(ids):
            if token in self._eos_ids:
                return ids[:position], True
        return strip_trailing_special(self._tokenizer, ids), False

    def count_tokens(self, messages: list[ChatMessage], completion: str = "") -> tuple[int, int]:
        return count_chat_tokens(self._counting_tokenizer, messages, completion)

    def close(self) -> None:
        self._model = None
