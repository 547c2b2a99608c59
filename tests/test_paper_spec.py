"""Every paper config held against the paper's settings as ``../shared/specs/paper.md`` states them.

The spec's tables are parsed (the models table, the 14B results table) and so are the numbers in the
lines quoted below; only which config setting a line speaks of is written here by hand, each with the
spec's words quoted. Every statement of the spec (a bullet, a table row, a paragraph) must be held by a
quoted rule: a setting checked against every paper config, a result checked against
``evaluation.paper_results``, or a behaviour of the code, which no config can change (named with where
it lives). A statement added to the spec fails the coverage test until it is sorted here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from conftest import require
from ragdistill.config import ExperimentConfig, load_config
from ragdistill.config.stages import PipelineSettings
from ragdistill.environments.registry import get_profile
from ragdistill.evaluation.paper_results import PAPER_ROWS, QWEN_7B, QWEN_14B, PaperRow

REPO = Path(__file__).resolve().parents[1]
SPEC = Path(os.environ.get("RAGDISTILL_PAPER_SPEC", REPO.parent / "shared" / "specs" / "paper.md"))
PAPER_CONFIGS = sorted((REPO / "configs").glob("paper-*.yaml"))
CONFIG_NAME = re.compile(r"^paper-(?P<env>alfworld|webshop)-(?P<agent>react|act|stateact)(?:-(?P<size>7b))?$")


@dataclass(frozen=True)
class PaperConfig:
    """A paper config and what its name says it reproduces."""

    name: str
    env: str
    agent: str
    model: str
    config: ExperimentConfig


@cache
def paper_config(path: Path) -> PaperConfig:
    match = CONFIG_NAME.match(path.stem)
    assert match, f"{path.name}: a paper config is named paper-<env>-<agent>[-7b]"
    model = QWEN_7B if match["size"] else QWEN_14B
    return PaperConfig(path.stem, match["env"], match["agent"], model, load_config(path))


def spec_text() -> str:
    require(SPEC.is_file(), f"the paper spec is not at {SPEC} (set RAGDISTILL_PAPER_SPEC)")
    return SPEC.read_text()


def normalised(text: str) -> str:
    return " ".join(text.split())


def statements(text: str) -> list[tuple[str, str]]:
    """(section, statement) for every bullet (with its continuation lines), table body row and paragraph."""
    found: list[tuple[str, str]] = []
    section, current, in_table = "", "", False

    def close() -> None:
        nonlocal current
        if current:
            found.append((section, normalised(current)))
        current = ""

    for line in text.splitlines():
        is_row = line.startswith("|")
        if is_row and not in_table:
            close()  # a table's header row
        elif is_row and not re.fullmatch(r"\|[-| ]+\|", line.strip()):
            found.append((section, normalised(line)))
        elif line.startswith("#"):
            close()
            section = line.lstrip("#").strip()
        elif not line.strip():
            close()
        elif line.startswith("- "):
            close()
            current = line[2:]
        elif not is_row:
            current = f"{current} {line}" if current else line
        in_table = is_row
    close()
    return found


def table(text: str, heading: str) -> list[dict[str, str]]:
    """The body rows, by column name, of the first table under the ``## `` heading starting ``heading``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {heading}"))
    first = next(i for i in range(start, len(lines)) if lines[i].startswith("|"))
    end = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), len(lines))

    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in line.strip().strip("|").split("|")]

    header = cells(lines[first])
    return [dict(zip(header, cells(line), strict=True)) for line in lines[first + 2 : end]]


def number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"the spec's words {text!r} no longer hold {pattern!r}: update this test"
    return float(match.group(1))


# --- the models table ---------------------------------------------------------------------------------


def models_row(role: str) -> str:
    rows = {row["role"]: row["paper"] for row in table(spec_text(), "Models and roles")}
    return rows[role]


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=[path.stem for path in PAPER_CONFIGS])
def test_each_paper_config_runs_the_models_the_spec_names(path: Path) -> None:
    paper, config = paper_config(path), paper_config(path).config
    assert config.env.name == paper.env and config.agent.format == paper.agent

    base = models_row("agent / teacher / student base")
    sizes = {f"Qwen2.5-{size}B-Instruct" for size in re.findall(r"Qwen2\.5-(\d+)B-Instruct", base)}
    agent = config.models.agent
    assert paper.model in sizes and agent.model.name == f"Qwen/{paper.model}"
    assert "vLLM" in base and agent.backend.kind == "vllm"
    assert agent.sampling.temperature == number(r"temperature (\d+)", base)
    assert agent.sampling.seed == number(r"seed (\d+)", base)

    extractor_row, extractor = models_row("hint extractor"), config.models.extractor
    assert "GPT-4o" in extractor_row and extractor.backend.served_model_name == "gpt-4o"
    assert extractor.sampling.temperature == number(r"temperature (\d+)", extractor_row)
    assert extractor.sampling.max_tokens == number(r"≤(\d+) tokens", extractor_row)

    retriever_row, reranker = models_row("retriever"), config.models.reranker
    assert retriever_row.startswith("an LLM") and config.retrieval.retriever == "llm-rerank"
    match = re.search(r"(\d+)-bit (Qwen2\.5-\d+B)", retriever_row)
    assert match and reranker.model.name == f"Qwen/{match[2]}-Instruct"
    assert match[1] == "4" and reranker.model.quantization == "bitsandbytes", (
        "bitsandbytes loads 4-bit weights"
    )
    assert reranker.sampling.temperature == 0.0


# --- settings stated in prose -------------------------------------------------------------------------

Check = Callable[[str, PaperConfig], None]


@dataclass(frozen=True)
class Rule:
    """A quoted statement of the spec: ``check`` holds every paper config to it (a setting), or ``note``
    says what it is instead (a result, a behaviour of the code and where it is tested, context)."""

    quote: str
    check: Check | None = None
    note: str = ""


def stage_a_tasks(quote: str, paper: PaperConfig) -> None:
    env = paper.config.env
    assert env.split == "train"
    if paper.env == "alfworld":
        assert env.limit == number(r"ALFWorld: ~(\d+) training games", quote)
        assert env.balanced is True and env.shuffle_seed is not None, (
            "~1200 games drawn evenly over the types"
        )
    else:
        assert env.limit == number(r"WebShop: the first (\d+) training goals", quote)
        assert env.balanced is False and env.shuffle_seed is None, "the first goals, in the upstream order"


def hints_per_failure(quote: str, paper: PaperConfig) -> None:
    most = number(r"1–(\d+) hints per failure for ALFWorld", quote)
    if paper.env == "webshop":
        most = number(r"1–(\d+) for WebShop", quote)
    assert paper.config.mining.max_hints_per_failure == most


def hint_length(quote: str, paper: PaperConfig) -> None:
    assert paper.config.mining.max_hint_chars == number(r"≤(\d+) characters", quote)


def dedupe(quote: str, paper: PaperConfig) -> None:
    mining = paper.config.mining
    assert mining.dedupe == "fuzzy" and mining.fuzzy_threshold == number(r"fuzzy ratio > ([\d.]+)", quote)


def hint_groups(quote: str, paper: PaperConfig) -> None:
    if paper.env == "alfworld":
        assert paper.config.retrieval.group == "task", "ALFWorld's task type is stated by the game"


def retrieval_query_and_k(quote: str, paper: PaperConfig) -> None:
    retrieval, ablation = paper.config.retrieval, paper.config.ablation
    assert (
        "task instruction (+ initial observation)" in quote and retrieval.query == "instruction+observation"
    )
    assert retrieval.k == number(r"k = (\d+)", quote)
    ablated = re.search(r"ablation: ([\d, ]+)\)", quote)
    assert ablated and ablation.k == [int(k) for k in ablated[1].split(",")]


def bm25_ablation(quote: str, paper: PaperConfig) -> None:
    assert "BM25" in quote and "bm25" in paper.config.ablation.retrievers


def successes_only(quote: str, paper: PaperConfig) -> None:
    distill = paper.config.distill
    assert distill.teacher == "rag" and distill.min_score is None
    invalid = get_profile(paper.env).invalid_observation
    if paper.env == "alfworld":
        dropped = number(rf'(\d+)\+ "{re.escape(invalid)}"', quote)
        assert distill.max_invalid_actions == dropped - 1
    else:
        assert f'any "{invalid}"' in quote and distill.max_invalid_actions == 0


def lora_recipe(quote: str, paper: PaperConfig) -> None:
    training = paper.config.training
    modules = re.search(r"LoRA on ([a-z,]+);", quote)
    assert modules and training.target_modules == [f"{name}_proj" for name in modules[1].split(",")]
    assert training.epochs == number(r"(\d+) epoch", quote)
    assert training.learning_rate == number(r"lr ([\d.e-]+),", quote)
    assert training.lr_scheduler == re.search(r"(\w+) schedule", quote)[1]  # type: ignore[index]
    assert training.warmup_ratio == number(r"warmup ([\d.]+);", quote)
    processes = {"cpu": 1, "1gpu": 1}[training.accelerate_config]
    effective = training.per_device_batch_size * training.gradient_accumulation_steps * processes
    assert effective == number(r"effective batch (\d+)", quote)
    env = "ALFWorld" if paper.env == "alfworld" else "WebShop"
    recipe = re.search(rf"{env} r=(\d+) / alpha=(\d+) / dropout ([\d.]+)", quote)
    assert recipe and (training.lora_r, training.lora_alpha) == (int(recipe[1]), int(recipe[2]))
    assert training.lora_dropout == float(recipe[3])
    assert "4-bit base (QLoRA)" in quote and training.load_in_4bit


def student_prompts(quote: str, paper: PaperConfig) -> None:
    assert "kept the few-shot prompt at evaluation" in quote and paper.config.evaluation.student_fewshot
    stages = PipelineSettings.from_experiment(paper.config)
    assert stages.evaluation("distill").retrieval is None and stages.evaluation("sft").retrieval is None


def alfworld_protocol(quote: str, paper: PaperConfig) -> None:
    if paper.env != "alfworld":
        return
    config = paper.config
    assert "valid_unseen (134 games)" in quote
    assert config.evaluation.split == "valid_unseen" and config.evaluation.limit is None, "all 134 games"
    assert config.agent.max_calls == number(r"at most (\d+) model calls", quote)
    assert config.agent.repeat_stop == number(r"same output (\d+) times", quote)


def webshop_protocol(quote: str, paper: PaperConfig) -> None:
    if paper.env != "webshop":
        return
    config = paper.config
    assert config.evaluation.split == "test" and config.evaluation.limit == number(
        r"first (\d+) test goals", quote
    )
    steps = number(r"; (\d+) steps;", quote)
    assert config.env.options["max_steps"] == steps and config.agent.max_calls == steps
    assert config.env.options["page_size"] == number(r"top (\d+) products", quote)
    invalid = re.search(r'invalid action gets "([^"]+)"', quote)
    assert invalid and get_profile("webshop").invalid_observation == invalid[1]


def react_prompts(quote: str, paper: PaperConfig) -> None:
    if (paper.env, paper.agent) == ("alfworld", "react"):
        assert paper.config.agent.fewshot_count == number(r"(\d+) examples of the same task type", quote)


def agent_formats(quote: str, paper: PaperConfig) -> None:
    formats = {("alfworld", "react"), ("alfworld", "stateact"), ("webshop", "act"), ("webshop", "stateact")}
    assert (paper.env, paper.config.agent.format) in formats


CODE = "a behaviour of the code, not a setting"
RULES: tuple[Rule, ...] = (
    Rule("Source: arXiv 2510.01375 and the authors' public implementation", note="context"),
    Rule("ALFWorld: ~1200 training games; WebShop: the first 1200 training goals.", stage_a_tasks),
    Rule(
        "A trajectory is a failure when ALFWorld `won` is false, or WebShop reward < 1.",
        note=f"{CODE}: each environment's success (tests/test_alfworld.py, tests/test_webshop.py)",
    ),
    Rule(
        "Input to the extractor: the task goal, the environment / task type, and the failed trajectory",
        note=f"{CODE}: the extraction prompt (ragdistill.retrieval.mining, tests/test_hints.py)",
    ),
    Rule("1–4 hints per failure for ALFWorld, 1–2 for WebShop.", hints_per_failure),
    Rule("Each hint is imperative, general (not about this one episode), ≤120 characters", hint_length),
    Rule("dedupe within a task type with a fuzzy ratio > 0.85", dedupe),
    Rule("group by ALFWorld task type (6) or WebShop category", hint_groups),
    Rule(
        "query = the task instruction (+ initial observation); candidates = the hints of the episode's task "
        "type / category; k = 3 (ablation: 1, 3, 6, 9).",
        retrieval_query_and_k,
    ),
    Rule(
        "Retrieval happens ONCE, at episode start",
        note=f"{CODE}: the teacher's hint source (tests/test_hint_injection.py)",
    ),
    Rule(
        "The hint block sits in the prompt before the few-shot examples",
        note=f"{CODE}: the prompt builder (tests/test_hint_injection.py, tests/test_pipeline_flow.py)",
    ),
    Rule(
        "The authors' BM25 / TF-IDF ablation indexed the category names instead of the hint texts",
        bm25_ablation,
    ),
    Rule(
        "Keep only successful trajectories (WebShop: reward = 1; the authors also dropped trajectories with 2+ "
        '"Nothing happens." / any "Invalid action!").',
        successes_only,
    ),
    Rule(
        "Training prompt = the first system line + the task; the few-shot examples and the hint block are removed.",
        note=f"{CODE}: the dataset builder (tests/test_datasets.py)",
    ),
    Rule(
        "SFT baseline = the same recipe on the base agent's successes.",
        note=f"{CODE}: the sft dataset's source (config.stages.PipelineSettings.dataset)",
    ),
    Rule(
        "LoRA on q,k,v,o,gate,up,down; 1 epoch; lr 2e-4, linear schedule, warmup 0.1; effective batch 8; "
        "ALFWorld r=64 / alpha=128 / dropout 0.1; WebShop r=16 / alpha=32 / dropout 0.2 (the two notebooks "
        "differ; which the paper reports is uncertain). The authors used a 4-bit base (QLoRA).",
        lora_recipe,
    ),
    Rule(
        "Students run with no retrieval; evidence says they kept the few-shot prompt at evaluation.",
        student_prompts,
    ),
    Rule(
        "ALFWorld: valid_unseen (134 games); at most 100 model calls per episode (a `think:` call counts); "
        "stop early after the same output 5 times in a row;",
        alfworld_protocol,
    ),
    Rule(
        "WebShop: the first 100 test goals; 15 steps; search results show the top 3 products; an invalid "
        'action gets "Invalid action!".',
        webshop_protocol,
    ),
    Rule(
        "Tokens per episode = Σ over model calls of (input tokens + output tokens) with the model's tokenizer",
        note=f"{CODE}: the metrics (tests/test_evaluation.py)",
    ),
    Rule("2 examples of the same task type; stop at newline.", react_prompts),
    Rule("Act: the same without think lines.", agent_formats),
    Rule("StateAct (ALFWorld): each agent turn states", agent_formats),
    Rule("WebShop: `search[query]` / `click[button or product or option]`", agent_formats),
    Rule("| ALFWorld ReAct success % (tokens/episode) |", note="result: the 14B table, below"),
    Rule("| ALFWorld StateAct success % |", note="result: the 14B table, below"),
    Rule("| WebShop Act score (tokens) |", note="result: the 14B table, below"),
    Rule("| WebShop StateAct score |", note="result: the 14B table, below"),
    Rule("Qwen2.5-7B: ALFWorld ReAct", note="result: the 7B lines, below"),
    Rule("| agent / teacher / student base |", note="the models table, above"),
    Rule("| hint extractor |", note="the models table, above"),
    Rule("| retriever |", note="the models table, above"),
)
SETTINGS = [rule for rule in RULES if rule.check is not None]


def test_every_quoted_rule_is_in_the_spec() -> None:
    text = normalised(spec_text())
    missing = [rule.quote for rule in RULES if normalised(rule.quote) not in text]
    assert not missing, f"the spec no longer says these words; update the rules: {missing}"


def test_every_statement_of_the_spec_is_held_by_a_rule() -> None:
    unheld = [
        f"[{section}] {statement}"
        for section, statement in statements(spec_text())
        if not any(normalised(rule.quote) in statement for rule in RULES)
    ]
    assert not unheld, "statements of the spec no rule holds (add a Rule):\n" + "\n".join(unheld)


@pytest.mark.parametrize(
    "rule, path",
    [(rule, path) for rule in SETTINGS for path in PAPER_CONFIGS],
    ids=[f"{rule.check.__name__}-{path.stem}" for rule in SETTINGS for path in PAPER_CONFIGS],  # type: ignore[union-attr]
)
def test_each_paper_config_holds_each_setting_the_spec_states(rule: Rule, path: Path) -> None:
    assert rule.check is not None
    statement = next(text for _, text in statements(spec_text()) if normalised(rule.quote) in text)
    rule.check(statement, paper_config(path))


# --- the results ----------------------------------------------------------------------------------------

RESULT_ROWS = {
    "ALFWorld ReAct": ("alfworld", "react"),
    "ALFWorld StateAct": ("alfworld", "stateact"),
    "WebShop Act": ("webshop", "act"),
    "WebShop StateAct": ("webshop", "stateact"),
}


def paper_row(model: str, env: str, agent: str) -> PaperRow:
    (row,) = [row for row in PAPER_ROWS if (row.model, row.env, row.agent) == (model, env, agent)]
    return row


def spec_results() -> dict[tuple[str, str, str], list[tuple[float, float | None]]]:
    """(model, env, agent) -> the four methods' (value, tokens per episode) as the spec states them."""
    results: dict[tuple[str, str, str], list[tuple[float, float | None]]] = {}
    text = spec_text()
    for row in table(text, "The paper's results (Qwen2.5-14B)"):
        label, *cells = row.values()
        (env, agent) = next(value for name, value in RESULT_ROWS.items() if label.startswith(name))
        parsed = [re.fullmatch(r"([\d.]+) \(([\d.]+)k\)", cell) for cell in cells]
        assert all(parsed), f"cannot read {cells}"
        results[(QWEN_14B, env, agent)] = [(float(m[1]), float(m[2]) * 1000) for m in parsed]  # type: ignore[index]
    seven = normalised(text[text.index("Qwen2.5-7B:") :])
    for env_name, first, second in (("ALFWorld", "ReAct", "StateAct"), ("WebShop", "Act score", "StateAct")):
        clause = re.search(rf"{env_name} {first} ([\d. /]+); {second} ([\d. /]+)\.", seven)
        assert clause, f"cannot read the 7B {env_name} results in {seven!r}"
        for agent_label, values in ((first, clause[1]), (second, clause[2])):
            env, agent = RESULT_ROWS[f"{env_name} {agent_label.split()[0]}"]
            results[(QWEN_7B, env, agent)] = [(float(value), None) for value in values.split("/")]
    return results


def test_paper_results_hold_the_specs_numbers() -> None:
    results = spec_results()
    assert len(results) == len(PAPER_ROWS) == 8
    for (model, env, agent), cells in results.items():
        row = paper_row(model, env, agent)
        assert [
            (row.cells[m].value, row.cells[m].tokens_per_episode) for m in ("base", "rag", "sft", "distill")
        ] == cells


def test_every_result_the_spec_reports_has_a_paper_config() -> None:
    shipped = {(c.model, c.env, c.agent) for c in map(paper_config, PAPER_CONFIGS)}
    assert set(spec_results()) == shipped
