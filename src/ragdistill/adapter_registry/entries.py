"""What the registry stores: one immutable entry per adapter version, the current pointer, and events."""

from __future__ import annotations

import hashlib
import statistics
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, StringConstraints

from ragdistill.evaluation.metrics import MethodMetrics
from ragdistill.store_paths import manifest_entry_problem, manifest_name_problem

Headline = Literal["success", "score"]
EventKind = Literal["registered", "promoted", "rejected", "rolled_back"]
Actor = Literal["pipeline", "cli"]
VERSION_PATTERN = r"^v\d{4,}$"
VersionName = Annotated[str, StringConstraints(pattern=VERSION_PATTERN)]
"""``v0001``, ``v0002``, …: a version's name, and its file's (``registry/files`` checks what is read)."""
STORED_RECORD = ConfigDict(extra="forbid")
"""Each record class's ``__pydantic_config__``: a stored file with a field the class lacks is refused."""


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def folder_digest(files: dict[str, dict[str, Any]]) -> str:
    """``sha256:<hex>`` over a folder's file names and sha256s: the digest
    ``ragdistill.inference.adapters.adapter_digest`` computes from the files themselves, so an entry names
    its adapter exactly as episode records do."""
    combined = hashlib.sha256()
    for name in sorted(files):
        combined.update(name.encode() + b"\0")
        combined.update(bytes.fromhex(files[name]["sha256"]))
    return f"sha256:{combined.hexdigest()}"


@dataclass(frozen=True)
class EvalSummary:
    """One evaluated method on the evaluation split, reduced to what a promotion compares.

    ``value`` is the environment's headline (``EnvProfile.headline``) in percent: success % or score
    (mean reward x 100). ``task_list_sha256`` is the sha256 of the evaluation's ``tasks.json`` (the
    environment, its data version, the split and the task ids in order): two summaries compare only
    when it is equal.

    Evaluated under several sampling seeds (``evaluation.seeds``), ``value`` is the mean of the seeds'
    headlines and ``value_sd`` their sample standard deviation; ``episodes`` counts the episodes of one
    seed (the fewest: a task played again under another seed is not another task), and there is no
    interval (the seeds' episodes are not independent draws of tasks). ``seeds`` is empty in entries
    registered before seeds were recorded (one seed)."""

    __pydantic_config__ = STORED_RECORD

    method: str
    headline: Headline
    value: float | None
    ci_low: float | None
    ci_high: float | None
    episodes: int
    tokens_per_episode: float | None
    split: str
    task_list_sha256: str
    eval_digest: str
    seeds: list[int] = field(default_factory=list)
    value_sd: float | None = None

    @classmethod
    def from_metrics(
        cls,
        metrics: MethodMetrics,
        *,
        method: str,
        headline: Headline,
        split: str,
        task_list_sha256: str,
        eval_digest: str,
        seeds: list[int] | None = None,
    ) -> EvalSummary:
        success = headline == "success"
        return cls(
            method=method,
            headline=headline,
            value=metrics.success_percent if success else metrics.score_percent,
            ci_low=metrics.success_ci_low if success else None,
            ci_high=metrics.success_ci_high if success else None,
            episodes=metrics.episodes,
            tokens_per_episode=metrics.total_tokens_per_episode,
            split=split,
            task_list_sha256=task_list_sha256,
            eval_digest=eval_digest,
            seeds=list(seeds or []),
        )

    @classmethod
    def over_seeds(
        cls,
        per_seed: dict[int, MethodMetrics],
        *,
        method: str,
        headline: Headline,
        split: str,
        task_list_sha256: str,
        eval_digest: str,
    ) -> EvalSummary:
        """One evaluation under several seeds (see the class docstring); one seed is :meth:`from_metrics`."""
        if len(per_seed) == 1:
            ((seed, metrics),) = per_seed.items()
            return cls.from_metrics(
                metrics,
                method=method,
                headline=headline,
                split=split,
                task_list_sha256=task_list_sha256,
                eval_digest=eval_digest,
                seeds=[seed],
            )
        success = headline == "success"
        values = [m.success_percent if success else m.score_percent for m in per_seed.values()]
        tokens = [m.total_tokens_per_episode for m in per_seed.values()]
        known = [value for value in values if value is not None]
        return cls(
            method=method,
            headline=headline,
            value=statistics.fmean(known) if len(known) == len(values) else None,
            ci_low=None,
            ci_high=None,
            episodes=min(m.episodes for m in per_seed.values()),
            tokens_per_episode=statistics.fmean(t for t in tokens if t is not None)
            if all(t is not None for t in tokens)
            else None,
            split=split,
            task_list_sha256=task_list_sha256,
            eval_digest=eval_digest,
            seeds=list(per_seed),
            value_sd=statistics.stdev(known) if len(known) == len(values) else None,
        )

    def describe(self) -> str:
        """``success 58.3% [30.1, 80.2] on 12 valid_unseen episodes`` (a score has no interval); over
        several seeds ``success 58.3% ± 4.2 (mean ± sd of 3 seeds) on 12 valid_unseen episodes each``."""
        if self.value is None:
            return f"{self.headline}: no episodes"
        unit = "%" if self.headline == "success" else ""
        if len(self.seeds) > 1:
            spread = f" ± {self.value_sd:.1f}" if self.value_sd is not None else ""
            return (
                f"{self.headline} {self.value:.1f}{unit}{spread} (mean ± sd of {len(self.seeds)} seeds) on "
                f"{self.episodes} {self.split} episodes each"
            )
        interval = f" [{self.ci_low:.1f}, {self.ci_high:.1f}]" if self.ci_low is not None else ""
        return f"{self.headline} {self.value:.1f}{unit}{interval} on {self.episodes} {self.split} episodes"


@dataclass(frozen=True)
class AdapterCopy:
    """The registry's own copy of an adapter: ``path`` is run-root relative, ``files`` are relative to it."""

    __pydantic_config__ = STORED_RECORD

    path: str
    digest: str
    files: dict[str, dict[str, Any]]
    source: str
    training_manifest: str


@dataclass(frozen=True)
class RegistryEntry:
    """One adapter version (``registry/versions/<version>.json``), written once and never changed.

    ``key`` is what makes it this version: the student, the adapter's content and the evaluation's
    content. Registering the same adapter with the same evaluation again returns this entry."""

    __pydantic_config__ = STORED_RECORD

    version: VersionName
    key: str
    student: str
    created_at: str
    adapter: AdapterCopy
    base_model: dict[str, Any]
    lineage: dict[str, Any]
    training: dict[str, Any]
    evaluation: EvalSummary | None
    run: dict[str, Any]
    code_version: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def containment_problem(self, copy: str) -> str | None:
        """Why this entry cannot be used (None when it can): it must name the registry's own copy ``copy``
        of its adapter, and only plain file names inside it."""
        if self.adapter.path != copy:
            return f"its adapter path {self.adapter.path!r} is not the registry's own copy {copy}"
        if not isinstance(self.adapter.files, dict):
            return "its adapter files are not a mapping"
        for name, record in self.adapter.files.items():
            problem = manifest_name_problem(name) or manifest_entry_problem(record)
            if problem is not None:
                return f"its adapter file {name!r} is refused: {problem}"
        return None


@dataclass(frozen=True)
class Pointer:
    """``registry/current.json``: the current version and, most recent last, the versions that were
    current before it (what ``rollback`` returns to)."""

    __pydantic_config__ = STORED_RECORD

    version: VersionName
    previous: list[VersionName] = field(default_factory=list)
    event: int = 0
    updated_at: str = ""


@dataclass(frozen=True)
class Event:
    """One line of the registry's history (``registry/events/<sequence>.json``)."""

    __pydantic_config__ = STORED_RECORD

    sequence: int
    kind: EventKind
    version: VersionName
    by: Actor
    at: str
    reason: str
    from_version: VersionName | None = None
    manual: bool = False
    run: str = ""
    details: dict[str, Any] = field(default_factory=dict)
