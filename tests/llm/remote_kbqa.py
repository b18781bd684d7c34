"""A second `kbqa serve` for the openai-backend tests, standing in for vLLM (run as a script).

remote_kbqa.py HOME PORT API_KEY

The real app (`create_app` under uvicorn, OpenAI-compatible `/v1/chat/completions`) with the
tests' fake chat model injected: what is tested is the protocol, not the model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn
from langchain_core.messages import BaseMessage

from kbqa.server.app import create_app
from kbqa.settings import load_settings
from tests.fake_chat import FakeChat

MODEL_NAME = "echo-remote"


def echo(messages: list[BaseMessage]) -> str:
    """The reply `echo: <the last message>`: a test can tell it came through the remote."""
    return " ".join(["echo:", *messages[-1].text.split()])


def main() -> None:
    home, port, api_key = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    settings = load_settings(home, overrides={"server": {"api_key": api_key}})
    app = create_app(
        settings,
        chat_model=FakeChat(model_name=MODEL_NAME, reply=echo, max_tokens=1000, report_usage=True),
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
