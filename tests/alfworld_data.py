"""Where the slow ALFWorld tests find real games: the repo's data/ folder, installed from the mirror."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import require
from ragdistill.data import ALFWORLD_ARCHIVE, setup_data

REPO_ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("RAGDISTILL_DATA_MIRROR", REPO_ROOT.parent / "shared" / "data"))
DATA_DIR = REPO_ROOT / "data"


def alfworld_data_dir() -> Path:
    """``data/`` holding ALFWorld games: as found, else installed from the mirror, else the test skips
    (fails under CI=true: ``make setup`` installs them)."""
    if any((DATA_DIR / "alfworld" / "json_2.1.1" / "valid_unseen").glob("*/trial_*/game.tw-pddl")):
        return DATA_DIR
    require(
        (MIRROR / ALFWORLD_ARCHIVE).is_file(),
        f"no ALFWorld games in {DATA_DIR} and no mirror at {MIRROR} (set RAGDISTILL_DATA_MIRROR)",
    )
    setup_data(DATA_DIR, MIRROR, only=["alfworld"])
    return DATA_DIR
