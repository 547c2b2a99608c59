"""Security properties of the code and of a whole run.

- Nothing read from the artifact store or result storage is unpickled: the source holds no pickle /
  cloudpickle / dill / joblib / marshal / shelve load, no ``torch.load`` without ``weights_only=True``,
  no ``numpy.load(allow_pickle=True)``, no unsafe YAML load and no pickle result serializer (a static
  scan of ``src/`` that names file and line).
- A model folder's own Python code runs only when the config says so: every call passes
  ``trust_remote_code`` as ``False`` (the transformers, vLLM and sentence-transformers default) or as the
  config's switch (``….trust_remote_code``, off by default), and a planted model whose code would run
  is refused with the switch off.
- Secrets come only from the environment: config fields name environment variables, a setting whose URL
  carries a credential is refused (without echoing it), and a whole pipeline run with planted keys
  leaves them in no artifact, report, log, Prefect parameter, artifact or block
  (``test_planted_secrets_appear_nowhere_after_a_pipeline_run``).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from ragdistill.config import ConfigError, ExperimentConfig, with_overrides

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "ragdistill"

UNPICKLING_CALLS = {
    f"{module}.{name}"
    for module in ("pickle", "cPickle", "_pickle", "cloudpickle", "dill")
    for name in ("load", "loads", "Unpickler")
} | {"joblib.load", "marshal.load", "marshal.loads", "shelve.open", "pandas.read_pickle", "yaml.unsafe_load"}
UNSAFE_SERIALIZERS = {"pickle", "cloudpickle", "compressed/pickle", "compressed/cloudpickle"}


def _imported_names(tree: ast.Module) -> dict[str, str]:
    """Local name -> the dotted name it stands for, from every import in the module."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.expr, imports: dict[str, str]) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(imports.get(node.id, node.id))
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((keyword.value for keyword in call.keywords if keyword.arg == name), None)


def _is_constant(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_calls(source: str, filename: str) -> list[str]:
    """``file:line: what`` for every unsafe deserialisation or remote-code switch in ``source``."""
    tree = ast.parse(source, filename)
    imports = _imported_names(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if _is_constant_str(key, "trust_remote_code") and not (
                    _is_constant(value, False) or _is_the_switch(value)
                ):
                    found.append(f"{filename}:{node.lineno}: 'trust_remote_code' set to {ast.unparse(value)}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, imports) or ""
        name = name.replace("pd.read_pickle", "pandas.read_pickle").replace("np.load", "numpy.load")
        where = f"{filename}:{node.lineno}"
        if name in UNPICKLING_CALLS:
            found.append(f"{where}: {name}")
        if name == "torch.load" and not _is_constant(_keyword(node, "weights_only"), True):
            found.append(f"{where}: torch.load without weights_only=True")
        allow_pickle = _keyword(node, "allow_pickle")
        if name == "numpy.load" and allow_pickle is not None and not _is_constant(allow_pickle, False):
            found.append(f"{where}: numpy.load with allow_pickle")
        if name == "yaml.load":
            loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or "Safe" not in ast.unparse(loader):
                found.append(f"{where}: yaml.load without a safe loader")
        remote_code = _keyword(node, "trust_remote_code")
        if remote_code is not None and not (_is_constant(remote_code, False) or _is_the_switch(remote_code)):
            found.append(f"{where}: trust_remote_code={ast.unparse(remote_code)}")
        serializer = _keyword(node, "result_serializer")
        if isinstance(serializer, ast.Constant) and serializer.value in UNSAFE_SERIALIZERS:
            found.append(f"{where}: result_serializer={serializer.value!r}")
    return sorted(found, key=lambda finding: int(finding.split(":")[1]))


def _is_the_switch(node: ast.expr) -> bool:
    """The config's ``trust_remote_code`` (``role.model.trust_remote_code``, a parameter of that name)."""
    return (isinstance(node, ast.Attribute) and node.attr == "trust_remote_code") or (
        isinstance(node, ast.Name) and node.id == "trust_remote_code"
    )


def _is_constant_str(node: ast.expr | None, value: str) -> bool:
    return isinstance(node, ast.Constant) and node.value == value


def test_the_scan_finds_each_unsafe_pattern() -> None:
    planted = """
import pickle as p
import torch, yaml, joblib
import numpy as np
from cloudpickle import loads
from transformers import AutoModel
p.load(open("x", "rb"))
loads(b"")
torch.load("m.pt")
torch.load("m.pt", weights_only=False)
torch.load("m.pt", weights_only=True)
np.load("a.npy", allow_pickle=True)
np.load("a.npy")
yaml.load(text)
yaml.load(text, Loader=yaml.SafeLoader)
joblib.load("m.joblib")
AutoModel.from_pretrained("x", trust_remote_code=True)
AutoModel.from_pretrained("x", trust_remote_code=spec.trust)
AutoModel.from_pretrained("x", trust_remote_code=False)
AutoModel.from_pretrained("x", trust_remote_code=role.model.trust_remote_code)
LLM(**{"model": "x", "trust_remote_code": True})
task.with_options(result_serializer="pickle")
task.with_options(result_serializer="json")
"""
    lines = [finding.split(": ", 1)[1] for finding in unsafe_calls(planted, "planted.py")]
    assert lines == [
        "pickle.load",
        "cloudpickle.loads",
        "torch.load without weights_only=True",
        "torch.load without weights_only=True",
        "numpy.load with allow_pickle",
        "yaml.load without a safe loader",
        "joblib.load",
        "trust_remote_code=True",
        "trust_remote_code=spec.trust",
        "'trust_remote_code' set to True",
        "result_serializer='pickle'",
    ]


def test_the_source_unpickles_nothing_and_never_trusts_remote_code() -> None:
    found = [
        finding
        for path in sorted(SRC.rglob("*.py"))
        for finding in unsafe_calls(path.read_text(), str(path.relative_to(SRC.parents[1])))
    ]
    assert found == []


PLANTED_CODE = """import os, pathlib
pathlib.Path(os.environ["PLANTED_MARKER"]).write_text("the model folder's code ran")
from transformers import PreTrainedTokenizer
class PlantedTokenizer(PreTrainedTokenizer):
    pass
"""


def test_a_model_folders_own_code_runs_only_when_the_config_switches_it_on(tmp_path: Path) -> None:
    """A checkpoint that ships a tokenizer class of its own: the loader the backends use refuses it with
    the config's default, and runs its code only with ``trust_remote_code: true``."""
    assert ExperimentConfig().models.agent.model.trust_remote_code is False
    model = tmp_path / "model"
    model.mkdir()
    auto_map = {"AutoTokenizer": ["tokenization_planted.PlantedTokenizer", None]}
    (model / "config.json").write_text(json.dumps({"model_type": "planted", "auto_map": auto_map}))
    (model / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PlantedTokenizer", "auto_map": auto_map})
    )
    (model / "tokenization_planted.py").write_text(PLANTED_CODE)
    marker = tmp_path / "marker"
    script = (
        "import sys\n"
        "from ragdistill.config import ExperimentConfig, with_overrides\n"
        "from ragdistill.inference.chat import load_tokenizer\n"
        "on = sys.argv[2] == 'on'\n"
        "spec = with_overrides(ExperimentConfig(), {'models.agent.model.trust_remote_code': on}).models.agent.model\n"
        "try:\n"
        "    load_tokenizer(sys.argv[1], spec.trust_remote_code)\n"
        "except Exception as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    env = {**os.environ, "PLANTED_MARKER": str(marker), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    off = subprocess.run(
        [sys.executable, "-c", script, str(model), "off"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "trust_remote_code" in off.stdout, off.stdout + off.stderr
    assert not marker.exists(), "with the switch off the folder's code must not run"
    subprocess.run(
        [sys.executable, "-c", script, str(model), "on"], env=env, capture_output=True, text=True, timeout=300
    )
    assert marker.read_text() == "the model folder's code ran"


@pytest.mark.parametrize(
    ("setting", "url"),
    [
        ("models.agent.backend.base_url", "https://user:{secret}@llm.example/v1"),
        ("models.extractor.backend.base_url", "http://127.0.0.1:8000/v1?api_key={secret}"),
        ("run.run_root", "s3://AKIA:{secret}@bucket/runs"),
    ],
)
def test_a_setting_carrying_a_credential_is_refused_without_echoing_it(setting: str, url: str) -> None:
    """Settings are copied into run.json, Prefect parameters and logs; keys belong in the environment."""
    secret = f"planted-{uuid.uuid4().hex}"
    with pytest.raises(ConfigError, match=rf"{re.escape(setting)} carries a credential") as raised:
        with_overrides(ExperimentConfig(), {setting: url.format(secret=secret)})
    assert secret not in str(raised.value)
    plain = with_overrides(ExperimentConfig(), {"models.agent.backend.base_url": "http://127.0.0.1:8000/v1"})
    assert plain.models.agent.backend.base_url == "http://127.0.0.1:8000/v1"


@pytest.mark.parametrize(
    "text",
    [
        "[default]\nsecret={secret}\naws_access_key_id = AKIAEXAMPLE\n",
        "aws_access_key_id: AKIAEXAMPLE\nrun:\n  name: {secret}\n",
        "env: aws_secret_access_key = {secret}\n",
        "agent:\n  - aws_secret_access_key: {secret}\n",
        "models:\n  agent:\n    model: {{name: {secret}, max_model_len: 16}}\n    sampling: {{max_tokens: 64}}\n",
        "env:\n  split: [{secret}\n",
        "run:\n  run_root: http://user:{secret}@example.com/runs\n",
    ],
    ids=[
        "credentials file", "secret as a setting", "a section given as text", "a section given as a list",
        "a check across a role's settings", "invalid YAML on the secret's line", "credential in a refused URL",
    ],
)  # fmt: skip
def test_a_config_load_error_names_the_key_but_never_echoes_what_the_file_holds(
    tmp_path: Path, text: str
) -> None:
    """A flow run may name any file as its config (``config_name``): a credentials file must not come
    back in the error, which the CLI prints and Prefect records."""
    from ragdistill.config import load_config

    secret = f"{uuid.uuid4().hex}/{uuid.uuid4().hex[:7]}"
    path = tmp_path / "credentials"
    path.write_text(text.format(secret=secret))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(path) in str(raised.value)
    assert secret[:12] not in str(raised.value), str(raised.value)


SECRET_FIELD = re.compile(r"key|secret|token|password|credential", re.IGNORECASE)
COUNTED_TOKENS = re.compile(r"tokens?$|^max_tokens|token_budget|^count_", re.IGNORECASE)


def _fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _fields(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def test_config_fields_name_environment_variables_and_never_hold_secrets() -> None:
    secret_like = [
        (name, field)
        for name, field in _fields(ExperimentConfig)
        if SECRET_FIELD.search(name.rsplit(".", 1)[-1]) and not COUNTED_TOKENS.search(name.rsplit(".", 1)[-1])
    ]
    assert secret_like, "the scan sees the API key setting"
    for name, field in secret_like:
        assert name.endswith("_env") and field.annotation is str, f"{name} must name an environment variable"


HINT_REPLY = json.dumps({"hints": [{"text": "Open {container} before looking for {object} inside it."}]})


class OpenAIServerDouble:
    """A loopback ``/v1/chat/completions`` server (a test double) that plays the counter of the agent
    like test_pipeline_flow's double ("look"/"inventory"), answers extraction requests (they carry a
    ``response_format``) with one fixed hint, and records the Authorization header of every request."""

    def __init__(self) -> None:
        self.authorizations: set[str] = set()
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                double.authorizations.add(self.headers.get("authorization", ""))
                if "response_format" in body:
                    text = HINT_REPLY
                else:
                    text = "look" if len(body["messages"]) % 4 < 2 else "inventory"
                reply = {
                    "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split())},
                }
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> OpenAIServerDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def secret_pipeline_config(tmp_path: Path, run_root: str, base_url: str) -> Path:
    """test_pipeline_flow's tiny ALFWorld config, with both model roles on the OpenAI-compatible server."""
    data = yaml.safe_load((REPO / "configs" / "demo-alfworld.yaml").read_text())
    data["run"]["run_root"] = run_root
    data["env"].update(limit=1, workers=1, data_dir=str(REPO / "data"))
    data["agent"]["max_calls"] = 2
    data["distill"] = {"teacher": "rag"}
    data["warm_start"] = {"enabled": False}  # a server plays its own weights, never a warm start's
    data["evaluation"].update(limit=1, methods=["base", "rag"])
    backend = {"kind": "openai", "base_url": base_url, "api_key_env": "OPENAI_API_KEY", "max_retries": 0}
    for role in ("agent", "extractor"):
        data["models"][role]["backend"] = backend
    path = tmp_path / "secrets.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def prefect_records() -> Iterator[tuple[str, str]]:
    """(what, JSON) for everything the Prefect server stored: flow runs with their parameters, task
    runs, artifacts, logs, block documents (with their secret fields) and variables."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        pages = {
            "flow run": client.read_flow_runs,
            "task run": client.read_task_runs,
            "artifact": client.read_artifacts,
            "log": client.read_logs,
        }
        for what, read in pages.items():
            offset = 0
            while page := read(limit=200, offset=offset):
                for item in page:
                    yield what, item.model_dump_json()
                offset += len(page)
        for block in client.read_block_documents(include_secrets=True):
            yield "block document", json.dumps(block.model_dump(mode="json"), default=str)
            yield "block data", json.dumps(block.data, default=lambda value: value.get_secret_value())
        for variable in client.read_variables():
            yield "variable", variable.model_dump_json()


def prefect_database() -> list[tuple[str, str]]:
    """The server's SQLite database file itself (the test server's), read as bytes."""
    from prefect.settings import get_current_settings

    url = str(get_current_settings().server.database.connection_url.get_secret_value())
    path = Path(url.split("///", 1)[-1]) if url.startswith("sqlite") else None
    assert path is not None and path.is_file(), f"a SQLite test server, not {url.split('://')[0]}"
    return [(f"database {path.name}", path.read_bytes().decode("latin-1"))]


@pytest.mark.slow
@pytest.mark.s3
def test_planted_secrets_appear_nowhere_after_a_pipeline_run(
    prefect_server: None, s3_root: str, tmp_path: Path
) -> None:
    """`ragdistill pipeline` on an s3:// run root, in its own process with planted keys in its
    environment. The run uses both (the model server gets the API key; S3 requests are signed with the
    planted secret, which s3rver does not verify); then every place a run leaves text is searched: its
    stdout and stderr (every log line), every object under the run root (results, report), the Prefect
    server's records and database file, and PREFECT_HOME."""
    from prefect.settings import PREFECT_API_URL

    from ragdistill.store import ArtifactStore

    planted = {
        name: f"planted-{name.lower()}-{uuid.uuid4().hex}"
        for name in ("OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY")
    }
    environment = {
        **os.environ,
        **planted,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC.parent), os.environ.get("PYTHONPATH")])),
        "PREFECT_LOGGING_EXTRA_LOGGERS": "ragdistill",  # ragdistill's log lines reach the server too
        "PREFECT_LOGGING_ROOT_LEVEL": "DEBUG",  # every library's debug lines reach stderr
    }
    with OpenAIServerDouble() as server:
        config_path = secret_pipeline_config(tmp_path, s3_root, server.base_url)
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "ragdistill.cli",
                "pipeline",
                "--config",
                str(config_path),
                "--run-root",
                s3_root,
            ],
            env=environment,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=900,
        )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["base_episodes"] == 1 and summary["report_methods"] == 2
    assert server.authorizations == {f"Bearer {planted['OPENAI_API_KEY']}"}, "the run used the planted key"

    places: list[tuple[str, str]] = [("stdout", run.stdout), ("stderr", run.stderr)]
    store = ArtifactStore(s3_root)
    names = store.list(hidden=True)
    assert "reports/report.md" in names and any(name.startswith(".prefect-results/") for name in names)
    places += [(f"object {name}", store.read_bytes(name).decode(errors="replace")) for name in names]
    places += list(prefect_records()) + prefect_database()
    places += [
        (f"file {path}", path.read_text(errors="replace")) for path in _files(os.environ["PREFECT_HOME"])
    ]
    assert any(what == "log" for what, _ in places), "the scan sees the run's log lines"
    for where in ("flow run", "database"):
        assert any(what.startswith(where) and s3_root in text for what, text in places), (
            f"the scan sees {where}"
        )
    leaks = [
        f"{name} in {what}" for what, text in places for name, secret in planted.items() if secret in text
    ]
    assert leaks == []


def _files(folder: str) -> list[Path]:
    return [path for path in Path(folder).rglob("*") if path.is_file() and path.stat().st_size < 50_000_000]
