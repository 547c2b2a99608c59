"""A fault-injecting OpenAI-compatible chat server: a test double on loopback, for the ``openai`` backend.

:class:`FaultInjectingOpenAIServer` is a real HTTP server (``http.server`` in a thread) that answers
``POST /v1/chat/completions`` with a deterministic policy: a function from the request body to the
assistant's text (:func:`scripted_policy` plays one fixed action for agents and answers one fixed hint
for mining requests, which carry a ``response_format``). Before answering, it serves the next scripted
fault, one per request (:data:`FAULTS`):

- ``"500"``, ``"503"``: that status with an error object;
- ``"429"``: Too Many Requests with ``Retry-After: <retry_after>``;
- ``"timeout"``: waits ``hang_s`` (longer than the client's timeout), then answers;
- ``"reset"``: closes the connection with a TCP reset before answering;
- ``"slow"``: a correct answer trickled a few bytes at a time, ``slow_gap_s`` apart, so no single read
  waits long but the whole answer takes ``slow_total_s``;
- ``"malformed"``: a 200 whose body is JSON cut in the middle;
- ``"empty-choices"``: a 200 with ``"choices": []``;
- ``"truncated"``: a 200 whose body stops short of its ``content-length``.

:meth:`die_after` makes the server go down for good after that many more answers: the listening socket
closes (new connections are refused) and connections already open are reset; :meth:`start` brings it
back on the same port. :func:`train_tiny_tokenizer` writes a small real tokenizer with a chat template,
for a ``model.name`` the backend can count tokens with.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FAULTS = ("500", "503", "429", "timeout", "reset", "slow", "malformed", "empty-choices", "truncated")
HINT_ANSWER = '{"hints": [{"text": "Open {container} before looking for {object} inside it."}]}'

Policy = Callable[[dict[str, Any]], str]


def scripted_policy(action: str = "inc", hint_answer: str = HINT_ANSWER) -> Policy:
    """Answers a mining request (it asks for JSON) with ``hint_answer``, every other request with
    ``action``."""

    def answer(body: dict[str, Any]) -> str:
        return hint_answer if "response_format" in body else action

    return answer


DEFAULT_TOKENIZER_CORPUS = ("You are in the middle of a room. Open the drawer, inc, wait.",)


def train_tiny_tokenizer(folder: Path, corpus: tuple[str, ...] = DEFAULT_TOKENIZER_CORPUS) -> Path:
    """A 400-token byte-level BPE trained on ``corpus`` with a ChatML template, saved to ``folder`` (a
    loadable model name for token counting; no weights)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(list(corpus) * 10, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|im_end|>")
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    return folder


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that gave up (timeouts, resets) are expected here; nothing to report."""


class FaultInjectingOpenAIServer:
    """See the module docstring. Thread-safe; ``requests`` holds every request body in arrival order."""

    def __init__(
        self,
        policy: Policy,
        faults: Iterable[str] = (),
        *,
        retry_after: str = "0",
        hang_s: float = 1.0,
        slow_gap_s: float = 0.05,
        slow_total_s: float = 1.0,
    ) -> None:
        unknown = sorted(set(faults) - set(FAULTS))
        if unknown:
            raise ValueError(f"unknown faults {unknown}; known: {FAULTS}")
        self.policy = policy
        self.retry_after, self.hang_s = retry_after, hang_s
        self.slow_gap_s, self.slow_total_s = slow_gap_s, slow_total_s
        self.requests: list[dict[str, Any]] = []
        self.served: list[str] = []
        """Per request: the fault served, "ok" for an answer, "down" for a reset while dead."""
        self._faults = list(faults)
        self._answers_left: int | None = None
        self._down = False
        self._lock = threading.Lock()
        self._port = 0
        self._server: _QuietServer | None = None
        self._thread: threading.Thread | None = None
        self._stopper: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    def start(self) -> FaultInjectingOpenAIServer:
        """Listen (again, on the same port after :meth:`die_after`), healthy."""
        if self._stopper is not None:
            self._stopper.join()
        with self._lock:
            self._down, self._answers_left = False, None
        self._server = _QuietServer(("127.0.0.1", self._port), self._handler())
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultInjectingOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, *faults: str) -> None:
        """Serve these faults to the next requests, one each, before answering normally again."""
        unknown = sorted(set(faults) - set(FAULTS))
        if unknown:
            raise ValueError(f"unknown faults {unknown}; known: {FAULTS}")
        with self._lock:
            self._faults.extend(faults)

    def die_after(self, answers: int) -> None:
        """Go down for good once ``answers`` more requests were answered."""
        with self._lock:
            self._answers_left = answers
        if answers <= 0:
            self._go_down()

    def _go_down(self) -> None:
        with self._lock:
            if self._down:
                return
            self._down = True
        self._stopper = threading.Thread(target=self.stop, daemon=True)
        self._stopper.start()

    def _next(self, body: dict[str, Any]) -> str:
        with self._lock:
            self.requests.append(body)
            if self._down:
                action = "down"
            elif self._faults:
                action = self._faults.pop(0)
            else:
                action = "ok"
            self.served.append(action)
            return action

    def _answered_one(self) -> None:
        with self._lock:
            if self._answers_left is None:
                return
            self._answers_left -= 1
            dead = self._answers_left <= 0
        if dead:
            self._go_down()

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        text = self.policy(body)
        prompt_words = sum(len(str(message.get("content", "")).split()) for message in body["messages"])
        return {
            "id": "chatcmpl-fault-double",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": prompt_words, "completion_tokens": len(text.split())},
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _headers(self, status: int, length: int, extra: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(length))
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.end_headers()

            def _send(self, status: int, data: bytes, extra: dict[str, str] | None = None) -> None:
                self._headers(status, len(data), extra)
                self.wfile.write(data)

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                action = double._next(body)
                try:
                    self._serve(action, body)
                except (BrokenPipeError, ConnectionResetError, OSError):
                    self.close_connection = True

            def _serve(self, action: str, body: dict[str, Any]) -> None:
                if action in ("down", "reset"):
                    self._reset()
                    return
                if action in ("500", "503"):
                    self._send(int(action), json.dumps({"error": {"message": f"injected {action}"}}).encode())
                    return
                if action == "429":
                    error = json.dumps({"error": {"message": "injected rate limit"}}).encode()
                    self._send(429, error, {"retry-after": double.retry_after})
                    return
                if action == "empty-choices":
                    self._send(200, json.dumps({"object": "chat.completion", "choices": []}).encode())
                    return
                data = json.dumps(double.completion(body)).encode()
                if action == "malformed":
                    self._send(200, data[: len(data) // 2])
                    return
                if action == "truncated":
                    self._headers(200, len(data) + 50)
                    self.wfile.write(data)
                    self.close_connection = True
                    return
                if action == "timeout":
                    time.sleep(double.hang_s)
                if action == "slow":
                    self._headers(200, len(data))
                    pieces = max(1, round(double.slow_total_s / double.slow_gap_s))
                    size = max(1, -(-len(data) // pieces))
                    for start in range(0, len(data), size):
                        self.wfile.write(data[start : start + size])
                        self.wfile.flush()
                        time.sleep(double.slow_gap_s)
                else:
                    self._send(200, data)
                double._answered_one()

        return Handler
