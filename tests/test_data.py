"""`ragdistill data setup`: checksums, atomic installs, idempotency, mirror and upstream sources.

Fake mirrors are built in tmp_path with the real file names and their own hashes (injected as the
expected hashes); one test checks the real mirror's files against the pinned hashes.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import lzma
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragdistill import data as data_module
from ragdistill.cli import app
from ragdistill.data import (
    ALFWORLD_ARCHIVE,
    DATA_FILES,
    MARKER_NAME,
    DataSetupError,
    alfworld_games_dir,
    setup_data,
)

REAL_MIRROR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SPLIT_GAMES = {"train": 3, "valid_seen": 1, "valid_unseen": 2, "valid_train": 1}


def sha(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def game_members(counts: dict[str, int]) -> dict[str, bytes]:
    members = {}
    for split, count in counts.items():
        for index in range(count):
            game = {"solvable": True, "walkthrough": ["look"], "grammar": "", "index": index}
            members[
                f"json_2.1.1/{split}/pick_and_place_simple-Mug-None-Desk-{index}/trial_T{index}/game.tw-pddl"
            ] = json.dumps(game).encode()
    return members


def tar_xz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as archive:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


@pytest.fixture
def fake_mirror(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A mirror folder with all four real file names, small contents, and their hashes."""
    mirror = tmp_path / "mirror"
    contents = {
        ALFWORLD_ARCHIVE: tar_xz(game_members(SPLIT_GAMES)),
        "webshop/products_1000.json.xz": lzma.compress(json.dumps([{"asin": "B0"}]).encode()),
        "webshop/items_ins_v2_1000.json": json.dumps({"B0": {"attributes": []}}).encode(),
        "react/alfworld_3prompts.json": json.dumps({"react_put_0": "..."}).encode(),
    }
    for relpath, payload in contents.items():
        (mirror / relpath).parent.mkdir(parents=True, exist_ok=True)
        (mirror / relpath).write_bytes(payload)
    return mirror, {relpath: sha(payload) for relpath, payload in contents.items()}


def leftovers(root: Path) -> list[Path]:
    """Temporary files or folders an install should never leave behind."""
    return [path for path in root.rglob(".*") if path.name != MARKER_NAME]


def test_installs_from_a_mirror_then_a_rerun_changes_nothing(
    fake_mirror: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    mirror, hashes = fake_mirror
    data_dir = tmp_path / "data"
    first = setup_data(data_dir, mirror, expected_sha256=hashes)
    assert {info["status"] for info in first["files"].values()} == {"installed"}
    games_dir = alfworld_games_dir(data_dir)
    assert first["files"][ALFWORLD_ARCHIVE]["games"] == SPLIT_GAMES
    assert len(list(games_dir.glob("*/*/trial_*/game.tw-pddl"))) == sum(SPLIT_GAMES.values())
    assert json.loads((games_dir / MARKER_NAME).read_text())["sha256"] == hashes[ALFWORLD_ARCHIVE]
    for relpath in hashes:
        if relpath != ALFWORLD_ARCHIVE:
            assert sha((data_dir / relpath).read_bytes()) == hashes[relpath]
    stamps = {path: path.stat().st_mtime_ns for path in data_dir.rglob("*")}

    second = setup_data(data_dir, mirror, expected_sha256=hashes)
    assert {info["status"] for info in second["files"].values()} == {"present"}
    assert {path: path.stat().st_mtime_ns for path in data_dir.rglob("*")} == stamps
    assert leftovers(data_dir) == []


def test_rerun_needs_no_mirror_once_installed(
    fake_mirror: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    mirror, hashes = fake_mirror
    setup_data(tmp_path / "data", mirror, expected_sha256=hashes)
    again = setup_data(tmp_path / "data", None, expected_sha256=hashes, upstream_urls=dict.fromkeys(hashes))
    assert {info["status"] for info in again["files"].values()} == {"present"}


def test_bad_checksum_is_rejected_naming_the_file_and_both_hashes(
    fake_mirror: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    mirror, hashes = fake_mirror
    target = "webshop/items_ins_v2_1000.json"
    (mirror / target).write_bytes(b'{"tampered": true}')
    actual = sha(b'{"tampered": true}')
    data_dir = tmp_path / "data"
    with pytest.raises(DataSetupError) as caught:
        setup_data(data_dir, mirror, expected_sha256=hashes)
    message = str(caught.value)
    assert target in message and hashes[target] in message and actual in message
    assert "mirror" in message
    assert not (data_dir / target).exists()
    assert (data_dir / "react/alfworld_3prompts.json").exists()  # the other files still installed
    assert leftovers(data_dir) == []


def test_bad_archive_checksum_leaves_no_game_tree(
    fake_mirror: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    mirror, hashes = fake_mirror
    data_dir = tmp_path / "data"
    with pytest.raises(DataSetupError, match=r"json_2\.1\.1\.tar\.xz"):
        setup_data(
            data_dir, mirror, only=["alfworld"], expected_sha256={**hashes, ALFWORLD_ARCHIVE: "0" * 64}
        )
    assert not alfworld_games_dir(data_dir).exists()
    assert leftovers(data_dir) == []


def test_an_unpack_that_dies_halfway_leaves_nothing_behind(
    fake_mirror: tuple[Path, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror, hashes = fake_mirror
    data_dir = tmp_path / "data"
    real_extractall = tarfile.TarFile.extractall

    def extract_some_then_die(self: tarfile.TarFile, path: Path, **kwargs: object) -> None:
        real_extractall(self, path, members=self.getmembers()[:3], filter="data")
        raise OSError("disk full")

    monkeypatch.setattr(tarfile.TarFile, "extractall", extract_some_then_die)
    with pytest.raises(OSError, match="disk full"):
        setup_data(data_dir, mirror, only=["alfworld"], expected_sha256=hashes)
    assert not alfworld_games_dir(data_dir).exists()
    assert leftovers(data_dir) == []


def test_a_stale_tree_without_marker_is_replaced(
    fake_mirror: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    mirror, hashes = fake_mirror
    data_dir = tmp_path / "data"
    stale = alfworld_games_dir(data_dir) / "train" / "half-unpacked"
    stale.mkdir(parents=True)
    summary = setup_data(data_dir, mirror, only=["alfworld"], expected_sha256=hashes)
    assert summary["files"][ALFWORLD_ARCHIVE]["status"] == "installed"
    assert not stale.exists()


def test_missing_mirror_folder_or_file_is_a_clear_error(
    fake_mirror: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    mirror, hashes = fake_mirror
    with pytest.raises(DataSetupError, match="does not exist; check the --mirror path"):
        setup_data(tmp_path / "data", tmp_path / "nowhere", expected_sha256=hashes)
    (mirror / "react/alfworld_3prompts.json").unlink()
    with pytest.raises(DataSetupError, match=r"has no react/alfworld_3prompts\.json"):
        setup_data(tmp_path / "data", mirror, only=["react"], expected_sha256=hashes)


def test_no_network_and_no_mirror_says_to_pass_mirror(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    dead = f"http://127.0.0.1:{closed_port}/file"
    urls = {item.relpath: dead for item in DATA_FILES}
    with pytest.raises(DataSetupError) as caught:
        setup_data(tmp_path / "data", None, only=["react", "alfworld"], upstream_urls=urls, timeout_s=5)
    message = str(caught.value)
    assert "react/alfworld_3prompts.json" in message and ALFWORLD_ARCHIVE in message
    assert message.count("--mirror") >= 2
    assert leftovers(tmp_path / "data") == []


def test_the_processed_catalogue_has_no_upstream_and_says_so(tmp_path: Path) -> None:
    with pytest.raises(DataSetupError, match=r"products_1000.json.xz has no upstream download.*--mirror"):
        setup_data(
            tmp_path / "data", None, only=["webshop"], upstream_urls={"webshop/items_ins_v2_1000.json": None}
        )


def test_unknown_group_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataSetupError, match="unknown data group"):
        setup_data(tmp_path / "data", None, only=["movies"])


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real HTTP server on loopback serving a folder, standing in for the upstream hosts."""
    root = tmp_path / "upstream"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_upstream_zip_is_unpacked_and_checked_by_game_counts(
    http_folder: tuple[Path, str], tmp_path: Path
) -> None:
    root, base = http_folder
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, payload in game_members(SPLIT_GAMES).items():
            archive.writestr(name, payload)
            archive.writestr(name.replace("game.tw-pddl", "initial_state.pddl"), b"(ignored)")
    (root / "tw-pddl.zip").write_bytes(buffer.getvalue())
    prompts = b'{"react_put_0": "..."}'
    (root / "prompts.json").write_bytes(prompts)
    urls = {ALFWORLD_ARCHIVE: f"{base}/tw-pddl.zip", "react/alfworld_3prompts.json": f"{base}/prompts.json"}
    data_dir = tmp_path / "data"
    options = {
        "only": ["alfworld", "react"],
        "upstream_urls": urls,
        "expected_sha256": {"react/alfworld_3prompts.json": sha(prompts)},
        "expected_games": SPLIT_GAMES,
    }

    summary = setup_data(data_dir, None, **options)  # type: ignore[arg-type]
    assert summary["files"][ALFWORLD_ARCHIVE]["games"] == SPLIT_GAMES
    games_dir = alfworld_games_dir(data_dir)
    assert not list(games_dir.rglob("initial_state.pddl"))
    assert json.loads((games_dir / MARKER_NAME).read_text())["sha256"] == f"upstream:{base}/tw-pddl.zip"
    assert setup_data(data_dir, None, **options)["files"][ALFWORLD_ARCHIVE]["status"] == "present"  # type: ignore[arg-type]

    fewer = {**SPLIT_GAMES, "train": 99}
    with pytest.raises(DataSetupError, match="train: expected 99, found 3"):
        setup_data(tmp_path / "other", None, **{**options, "expected_games": fewer})  # type: ignore[arg-type]
    assert not alfworld_games_dir(tmp_path / "other").exists()


def test_upstream_file_that_differs_from_the_pinned_hash_is_rejected(
    http_folder: tuple[Path, str], tmp_path: Path
) -> None:
    root, base = http_folder
    (root / "prompts.json").write_bytes(b"{}")
    with pytest.raises(DataSetupError, match=r"react/alfworld_3prompts.json \(downloaded from http"):
        setup_data(
            tmp_path / "data",
            None,
            only=["react"],
            upstream_urls={"react/alfworld_3prompts.json": f"{base}/prompts.json"},
        )


def test_an_upstream_page_that_is_not_a_zip_is_a_clear_error(
    http_folder: tuple[Path, str], tmp_path: Path
) -> None:
    root, base = http_folder
    (root / "games.zip").write_bytes(b"<html>Sign in to continue</html>")
    with pytest.raises(DataSetupError, match=r"is not a zip .*use --mirror"):
        setup_data(
            tmp_path / "data", None, only=["alfworld"], upstream_urls={ALFWORLD_ARCHIVE: f"{base}/games.zip"}
        )
    assert not alfworld_games_dir(tmp_path / "data").exists()
    assert leftovers(tmp_path / "data") == []


@pytest.mark.requires(REAL_MIRROR.is_dir(), f"the project's data mirror is not at {REAL_MIRROR}")
def test_the_real_mirror_matches_the_pinned_hashes() -> None:
    for item in DATA_FILES:
        assert data_module.sha256_file(REAL_MIRROR / item.relpath) == item.sha256, item.relpath


def test_cli_reports_a_missing_mirror(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["data", "setup", "--mirror", str(tmp_path / "nowhere"), "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "check the --mirror path" in result.output


@pytest.mark.requires(REAL_MIRROR.is_dir(), f"the project's data mirror is not at {REAL_MIRROR}")
def test_cli_installs_from_the_real_mirror_and_ends_with_json(tmp_path: Path) -> None:
    args = ["data", "setup", "--mirror", str(REAL_MIRROR), "--data-dir", str(tmp_path), "--only", "react"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["files"]["react/alfworld_3prompts.json"]["status"] == "installed"
    assert len(json.loads((tmp_path / "react/alfworld_3prompts.json").read_text())) == 36
