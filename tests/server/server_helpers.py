"""Real servers on loopback ports for the HTTP tests, and helpers to drive them.

Each server is uvicorn running `create_app(...)` in a thread on an ephemeral 127.0.0.1 port,
driven over real HTTP. The main server loads the bundled SmolLM2 (answers capped at a few
tokens); servers for the load, disconnect and auth tests get `tests.fake_chat.FakeChat`
injected where the model itself is not what is tested.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from langchain_core.language_models import BaseChatModel

from kbqa.server.app import create_app
from kbqa.settings import Settings, load_settings
from tests.model_cache import link_models
from tests.waiting import HANG_GUARD_S, wait_for

REPO = Path(__file__).resolve().parents[2]

# Written for these tests: facts a retriever can find and a tiny model can repeat.
DOCUMENTS = {
    "zephyr.md": (
        "# Zephyr-9 widget\n\nThe Zephyr-9 widget weighs 412 grams and is painted teal.\n\n"
        "## Battery\n\nThe Zephyr-9 battery lasts 31 hours on a single charge.\n"
    ),
    "harbor.txt": (
        "Harbor Street bakery opens at 6 am every weekday. Its rye loaf costs 4 euros.\n"
        "On Sundays the bakery stays closed.\n"
    ),
    "知识.md": "# 青石桥\n\n青石桥建于一八九零年，全长七十二米，横跨清河。\n",
}

QUICK_LLM = {"max_new_tokens": 16, "temperature": 0.0}


@dataclass
class LiveServer:
    url: str
    app: FastAPI
    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 120), **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def serve_in_thread(
    app: FastAPI, graceful_shutdown_s: int = 5
) -> tuple[str, uvicorn.Server, threading.Thread]:
    """`app` under uvicorn in a daemon thread of this process on a free loopback port, once it
    has started: its URL, the server (set `should_exit` to stop it) and the thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=graceful_shutdown_s)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), "the test server starts", 300)
    if not server.started:
        raise RuntimeError("the test server did not start")
    return f"http://127.0.0.1:{port}", server, thread


def start_server(app: FastAPI, settings: Settings) -> LiveServer:
    url, server, thread = serve_in_thread(app)
    return LiveServer(url, app, settings, server, thread)


def make_home(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A fresh KBQA_HOME whose converted models are the test process's (tests/model_cache.py):
    SmolLM2 (~20 s to convert) and the ONNX embedding are made once, not once per home."""
    return link_models(tmp_path_factory.mktemp(name))


def server_settings(
    home: Path, llm: dict[str, Any] | None = None, answer_mode: str = "auto", **server: Any
) -> Settings:
    """`answer_mode` "generate" for tests of what the model streams (auto may quote instead)."""
    server.setdefault("api_key", "")  # a KBQA_API_KEY in the developer's shell must not leak in
    overrides = {"llm": QUICK_LLM | (llm or {}), "server": server, "answer": {"mode": answer_mode}}
    return load_settings(home, overrides=overrides)


def write_documents(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in DOCUMENTS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def serve_with_model(
    home: Path,
    model: BaseChatModel,
    llm: dict[str, Any] | None = None,
    answer_mode: str = "auto",
    **server: Any,
) -> LiveServer:
    settings = server_settings(home, llm, answer_mode, **server)
    return start_server(create_app(settings, chat_model=model), settings)


def wait_for_job(
    client: httpx.Client, job_id: str, timeout: float = HANG_GUARD_S
) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["state"] in ("done", "failed") else None

    job = wait_for(finished, f"job {job_id} finishes", timeout)
    assert job is not None
    return job


def sse_events(response: httpx.Response) -> Iterator[Any]:
    """The JSON of each `data:` line of a Server-Sent Events response, as it arrives."""
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line.removeprefix("data: "))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kbqa(*args: str, output: IO[str] | None = None, **env: str) -> subprocess.Popen[str]:
    """The `kbqa` command in a process of its own, without the caller's KBQA_* variables.

    Its stdout and stderr go to `output` when given (a server that logs every request would
    fill an unread pipe and stall), else to pipes for `communicate`."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KBQA_")}
    environment |= {"HF_HUB_OFFLINE": "1", **env}
    return subprocess.Popen(
        [sys.executable, "-c", "from kbqa.cli import app; app()", *args],
        cwd=REPO,
        env=environment,
        stdout=output or subprocess.PIPE,
        stderr=output or subprocess.PIPE,
        text=True,
    )


NO_LLM = {"KBQA_LLM__BACKEND": "openai", "KBQA_LLM__OPENAI__BASE_URL": "http://127.0.0.1:9/v1"}
"""The environment of a `kbqa serve` that only ingests and searches: its LLM is never called."""


def llm_of(upstream: LiveServer) -> dict[str, str]:
    """The environment of a `kbqa serve` whose LLM is `upstream`'s model, through its OpenAI
    route (a real model would cost a subprocess seconds to load)."""
    return {
        "KBQA_LLM__BACKEND": "openai",
        "KBQA_LLM__OPENAI__BASE_URL": f"{upstream.url}/v1",
        "KBQA_LLM__OPENAI__MODEL": "echo-test",
        "KBQA_LLM__OPENAI__MAX_RETRIES": "0",
    }


def kbqa_serve(
    home: Path, output: IO[str] | None = None, **env: str
) -> tuple[subprocess.Popen[str], str]:
    """`kbqa serve` of `home` in a process of its own on a free loopback port, and its URL;
    wait_until_serving tells when it answers."""
    port = free_port()
    process = kbqa("serve", "--home", str(home), "--port", str(port), output=output, **env)
    return process, f"http://127.0.0.1:{port}"


def wait_until_serving(process: subprocess.Popen[str], url: str) -> None:
    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"kbqa serve exited: {process.communicate()[1]}")
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(up, "kbqa serve answers /healthz", 180)
