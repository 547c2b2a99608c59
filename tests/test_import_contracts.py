"""The package's layers are a contract checked by a tool (``[tool.importlinter]`` in pyproject.toml), not
by review: no import cycle between layers, no import up the layers, no Prefect in the stages, no concrete
environment named by the libraries that must work with any."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` over the package under ``root/src``, with ``root``'s contracts."""
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_package_keeps_its_import_contracts() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout


def test_an_import_up_the_layers_breaks_the_contract(tmp_path: Path) -> None:
    """A store that imports a stage (a leaf reaching up to the stages) is refused, naming the import."""
    shutil.copytree(
        REPO / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    store = tmp_path / "src" / "ragdistill" / "store.py"
    store.write_text(store.read_text() + "\nfrom ragdistill.stages import lifecycle  # noqa: E402,F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "layers, top down BROKEN" in result.stdout
    assert "ragdistill.store -> ragdistill.stages.lifecycle" in result.stdout


def test_only_the_cli_flows_deployments_config_and_preflight_see_the_whole_experiment_config() -> None:
    """A stage function, its identity and its Prefect task take ``(ctx, settings, inputs)``: nothing below
    the flows names ``ExperimentConfig`` (DESIGN.md, "Layout"); the deployments read the deployed config
    to choose each deployment's work pool."""
    package = REPO / "src" / "ragdistill"
    allowed = ("cli", "flows/", "deployments/", "config/", "preflight.py")
    naming = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "ExperimentConfig" in path.read_text()
    )
    assert naming, "the check must see the config package"
    assert [name for name in naming if not name.startswith(allowed)] == []
