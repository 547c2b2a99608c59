"""Test doubles for the rollout engine: a scripted backend and a countdown environment pool.

They stand in for vLLM and ALFWorld so that the engine's own logic (lock-step batching, stop rules,
think handling, resume) is tested fast and deterministically. The real components are exercised by the
slow tests in test_rollout_real.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ragdistill.environments.base import EnvError, ResetResult, StepResult, TaskInfo
from ragdistill.inference.base import ChatMessage, Generation, GenerationRequest


def word_count(text: str) -> int:
    return len(text.split())


class ScriptedBackendDouble:
    """Answers each request with ``policy(last user message, call index of that episode)``.

    Token counts are whitespace word counts of the rendered chat, applied identically in ``generate`` and
    ``count_tokens`` (the real backends use the model's tokenizer for both).
    """

    name = "scripted-double"

    def __init__(self, policy: Callable[[str], str], delay_s: float = 0.0) -> None:
        self.policy, self.delay_s = policy, delay_s
        self.batch_sizes: list[int] = []

    def count_tokens(self, messages: list[ChatMessage], completion: str = "") -> tuple[int, int]:
        return sum(word_count(m.content) + 1 for m in messages), word_count(completion)

    def generate(self, requests: list[GenerationRequest]) -> list[Generation]:
        self.batch_sizes.append(len(requests))
        time.sleep(self.delay_s)
        out = []
        for request in requests:
            text = self.policy(request.messages[-1].content)
            prompt, completion = self.count_tokens(request.messages, text)
            out.append(Generation(text, "stop", prompt, completion))
        return out

    def close(self) -> None:
        pass


class CountdownPoolDouble:
    """Each task is won by sending ``inc`` as often as the number at the end of its task id."""

    workers = 2

    def __init__(self, fail_reset_ids: Sequence[str] = ()) -> None:
        self.fail_reset_ids = set(fail_reset_ids)
        self.slots: dict[int, list] = {}
        self.next_slot = 0
        self.stepped: list[tuple[int, str]] = []
        self.max_live = 0
        self.observation_suffix: dict[str, str] = {}
        """Text appended to the first observation of these task ids (a long or special task)."""

    def reset_many(self, tasks: Sequence[TaskInfo]) -> list[tuple[int, ResetResult] | EnvError]:
        results: list[tuple[int, ResetResult] | EnvError] = []
        for task in tasks:
            if task.task_id in self.fail_reset_ids:
                results.append(EnvError(f"cannot load {task.task_id}"))
                continue
            slot, self.next_slot = self.next_slot, self.next_slot + 1
            remaining = int(task.task_id.rsplit("-", 1)[1])
            self.slots[slot] = [remaining]
            self.max_live = max(self.max_live, len(self.slots))
            observation = f"Counter at {remaining}.\nYour task is to: count down to zero."
            observation += self.observation_suffix.get(task.task_id, "")
            results.append((slot, ResetResult(task, observation, ["inc", "look"])))
        return results

    def step_many(self, actions: Sequence[tuple[int, str]]) -> list[StepResult | EnvError]:
        results: list[StepResult | EnvError] = []
        for slot, action in actions:
            self.stepped.append((slot, action))
            state = self.slots[slot]
            if action.split()[0] == "inc":
                state[0] -= 1
            won = state[0] <= 0
            observation = (
                "You won."
                if won
                else (f"Counter at {state[0]}." if action.startswith("inc") else "Nothing happens.")
            )
            results.append(StepResult(observation, 1.0 if won else 0.0, won, won, ["inc", "look"]))
        return results

    def release(self, slot: int) -> None:
        del self.slots[slot]


def count_down(last_message: str) -> str:
    """A policy that reads the counter and names it, so consecutive outputs differ."""
    number = last_message.split("Counter at ", 1)[-1].split(".", 1)[0]
    return f"inc {number}"


def countdown_tasks(counts: Sequence[int]) -> list[TaskInfo]:
    return [
        TaskInfo(
            env="countdown", split="train", task_id=f"task{i:02d}-{n}", task_type="count", instruction="count"
        )
        for i, n in enumerate(counts)
    ]
