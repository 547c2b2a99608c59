"""ReAct's published ALFWorld transcripts (``alfworld_3prompts.json``), as few-shot material.

The file is read at run time from ``<data_dir>/react/`` (installed by ``ragdistill data setup``), never
vendored. Its transcripts have small slips that would teach a model the wrong turn structure, so they
are repaired on load (see :func:`parse_react_transcript`); the agent format renders them afterwards, so
an example looks exactly like what the parser accepts.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from ragdistill.environments.alfworld.env import TASK_TYPES

REACT_PROMPTS_PATH = Path("react") / "alfworld_3prompts.json"
REACT_EXAMPLE_ORDER: tuple[int, ...] = (1, 0, 2)
"""ReAct's own runs used example 1 then example 0; the third comes last."""
REACT_FORMATS: tuple[str, ...] = ("react", "act")
THINK_ANSWER = "OK."
_THINK_LINE = re.compile(r"^think\s*:", re.IGNORECASE)


def _is_think(line: str) -> bool:
    return _THINK_LINE.match(line) is not None


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
        is_think = _is_think(output)
        if not is_think and not observed and index + 1 < len(turns):
            following, following_observed = turns[index + 1]
            if _is_think(following) and following_observed[:1] == [THINK_ANSWER]:
                repaired.append((following, THINK_ANSWER))
                observed = following_observed[1:]
                index += 1
        if is_think:
            if observed not in ([], [THINK_ANSWER]):
                raise ValueError(f"{key}: the think line {output!r} is answered by {observed!r}, not 'OK.'")
            observed = [THINK_ANSWER]
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


def react_transcripts(
    data_dir: Path | str, format_name: str, task_type: str, n: int = 2
) -> list[tuple[str, list[tuple[str, str]]]]:
    """``n`` of ReAct's transcripts for ``task_type`` in the react or act format, repaired, as
    (first observation, turns)."""
    if format_name not in REACT_FORMATS:
        raise ValueError(f"ReAct's transcripts exist for the react and act formats only, not {format_name!r}")
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown ALFWorld task type {task_type!r}; expected one of {TASK_TYPES}")
    if not 0 <= n <= len(REACT_EXAMPLE_ORDER):
        raise ValueError(f"ReAct has {len(REACT_EXAMPLE_ORDER)} transcripts per task type; asked for {n}")
    path = Path(data_dir) / REACT_PROMPTS_PATH
    prompts = _load_prompts(path.resolve())
    transcripts: list[tuple[str, list[tuple[str, str]]]] = []
    for number in REACT_EXAMPLE_ORDER[:n]:
        key = f"{format_name}_{task_type}_{number}"
        if key not in prompts:
            raise ValueError(f"{path} has no transcript {key!r}")
        transcripts.append(parse_react_transcript(prompts[key], key))
    return transcripts
