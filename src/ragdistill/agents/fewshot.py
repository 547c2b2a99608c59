"""Few-shot examples for the ALFWorld agents, from ReAct's transcripts or from expert walkthroughs.

ReAct's ``alfworld_3prompts.json`` is read at run time from ``<data_dir>/react/`` (installed by
``ragdistill data setup``), never vendored. Its transcripts have small slips that would teach a
model the wrong turn structure, so they are repaired on load (see :func:`parse_react_transcript`)
and re-rendered through the agent format, so an example looks exactly like what the parser accepts.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

from ragdistill.agents.formats import THINK_OBSERVATION, get_format
from ragdistill.agents.parsing import split_think

FewshotSource = Literal["react", "expert", "none"]
ALFWORLD_TASK_TYPES: tuple[str, ...] = ("put", "clean", "heat", "cool", "examine", "puttwo")
REACT_PROMPTS_PATH = Path("react") / "alfworld_3prompts.json"
REACT_EXAMPLE_ORDER: tuple[int, ...] = (1, 0, 2)
"""ReAct's own runs used example 1 then example 0; the third comes last."""


def parse_react_transcript(raw: str, key: str = "transcript") -> tuple[str, list[tuple[str, str]]]:
    """Split a ReAct transcript into its first observation and (agent line, observation) turns.

    Repairs, each seen in the published file: ``>go to`` without the space; a ``think:`` line with
    no "OK." after it; trailing spaces ("OK. "); and in ``react_cool_0`` an action whose observation
    was printed after the think that followed it (the think is moved before the action).
    """
    lines = [line.rstrip() for line in raw.strip().splitlines()]
    first = next((i for i, line in enumerate(lines) if line.startswith(">")), None)
    if first is None:
        raise ValueError(f"{key}: no '>' agent line in the transcript")
    observation = "\n".join(lines[:first]).strip()
    turns: list[tuple[str, list[str]]] = []
    for line in lines[first:]:
        if line.startswith(">"):
            turns.append((line[1:].strip(), []))
        elif line.strip():
            turns[-1][1].append(line.strip())
    repaired: list[tuple[str, str]] = []
    index = 0
    while index < len(turns):
        output, observed = turns[index]
        is_think = split_think(output) is not None
        if not is_think and not observed and index + 1 < len(turns):
            following, following_observed = turns[index + 1]
            if split_think(following) is not None and following_observed[:1] == [THINK_OBSERVATION]:
                repaired.append((following, THINK_OBSERVATION))
                observed = following_observed[1:]
                index += 1
        if is_think:
            if observed not in ([], [THINK_OBSERVATION]):
                raise ValueError(f"{key}: the think line {output!r} is answered by {observed!r}, not 'OK.'")
            observed = [THINK_OBSERVATION]
        if not observed:
            raise ValueError(f"{key}: the agent line {output!r} has no observation after it")
        repaired.append((output, "\n".join(observed)))
        index += 1
    return observation, repaired


@lru_cache(maxsize=4)
def _load_prompts(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: run `ragdistill data setup` (it installs ReAct's ALFWorld prompts), "
            "or use agent.fewshot_source 'expert' or 'none'"
        )
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of transcripts")
    return {str(key): str(value) for key, value in data.items()}


def _check_task_type(task_type: str) -> None:
    if task_type not in ALFWORLD_TASK_TYPES:
        raise ValueError(f"unknown ALFWorld task type {task_type!r}; expected one of {ALFWORLD_TASK_TYPES}")


def react_examples(data_dir: Path | str, format_name: str, task_type: str, n: int = 2) -> list[str]:
    """``n`` of ReAct's transcripts for ``task_type``, cleaned and rendered in the react or act format."""
    if format_name not in {"react", "act"}:
        raise ValueError(f"ReAct's transcripts exist for the react and act formats only, not {format_name!r}")
    _check_task_type(task_type)
    if not 0 <= n <= len(REACT_EXAMPLE_ORDER):
        raise ValueError(f"ReAct has {len(REACT_EXAMPLE_ORDER)} transcripts per task type; asked for {n}")
    path = Path(data_dir) / REACT_PROMPTS_PATH
    prompts = _load_prompts(path.resolve())
    agent_format = get_format(format_name)
    examples: list[str] = []
    for number in REACT_EXAMPLE_ORDER[:n]:
        key = f"{format_name}_{task_type}_{number}"
        if key not in prompts:
            raise ValueError(f"{path} has no transcript {key!r}")
        observation, turns = parse_react_transcript(prompts[key], key)
        examples.append(agent_format.transcript(observation, turns))
    return examples


def build_examples(
    source: FewshotSource,
    format_name: str,
    task_type: str,
    n: int,
    data_dir: Path | str,
    *,
    exclude_task_id: str | None = None,
    env_name: str = "alfworld",
) -> list[str]:
    """The few-shot examples an agent config asks for (``agent.fewshot_source``, ``fewshot_count``).

    ``expert`` examples come from walkthroughs of ``env_name``'s training games, collected once and
    cached under ``<data_dir>/fewshot/`` (the first call plays the games: a few seconds per game); the
    game ``exclude_task_id`` is never among them, so an episode on a training game is not shown its
    own solution. ReAct's transcripts are not games of ours: ``exclude_task_id`` leaves them alone.
    """
    get_format(format_name)
    if source == "none" or n == 0:
        return []
    if source == "react":
        return react_examples(data_dir, format_name, task_type, n)
    if source == "expert":
        from ragdistill.agents.demonstrations import render_expert_example
        from ragdistill.agents.expert import load_or_collect_expert_trajectories

        _check_task_type(task_type)
        trajectories = load_or_collect_expert_trajectories(
            data_dir, task_type, n, exclude_task_id=exclude_task_id, env_name=env_name
        )
        return [render_expert_example(trajectory, format_name) for trajectory in trajectories]
    raise ValueError(f"unknown few-shot source {source!r}; expected react, expert or none")
