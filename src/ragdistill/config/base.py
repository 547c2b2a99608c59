"""What every section shares: the strict base model and the error a bad config raises."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ragdistill.errors import UserFacingError


class ConfigError(UserFacingError, ValueError):
    """A configuration file or override that cannot be used; the message says where and why."""


DEFAULT_GPU_SHARE = 0.9
"""The share of one GPU's memory that in-process vLLM engines without an explicit setting divide."""


NAME_MAX_CHARS = 100
"""The longest run, environment or split name (they name folders, Prefect runs and report lines)."""


class StrictModel(BaseModel):
    """Unknown keys are errors, assignments are validated and floats are finite (no ``.inf``/``.nan``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class Frozen(BaseModel):
    """A settings model built from a config (``config.stages``): every field declared, none changed after
    it is built."""

    model_config = ConfigDict(extra="forbid", frozen=True)
