"""conftest.require: a missing prerequisite skips a test on a developer's machine and fails it under CI."""

from __future__ import annotations

import pytest

from conftest import installed, require


def test_a_missing_prerequisite_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    for unset in (None, "", "false", "0"):
        if unset is None:
            monkeypatch.delenv("CI", raising=False)
        else:
            monkeypatch.setenv("CI", unset)
        with pytest.raises(pytest.skip.Exception, match=r"^no widget: install it$"):
            require(False, "no widget: install it")
    for value in ("true", "1", "TRUE"):
        monkeypatch.setenv("CI", value)
        with pytest.raises(pytest.fail.Exception, match=r"^no widget: install it \(CI=true: .*fails"):
            require(False, "no widget: install it")
        require(True, "present: nothing happens")


def test_installed_finds_modules_without_importing_them() -> None:
    assert installed("json") and installed("ragdistill.store")
    assert not installed("no_such_module_here") and not installed("no_such_package.sub")
