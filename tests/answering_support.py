"""Real parts for the answering tests, built once per test process.

One KBQA home holds the converted SmolLM2 (converting the GGUF takes ~20 s, so it happens once)
and three knowledge bases ingested with the bundled MiniLM embedding from tests/data/answering:
`ops` (a Chinese deployment manual and an English operations page) and `hr` (a Chinese leave
policy). Test modules wrap these functions in fixtures; the state is per process, so the model
loads once however many modules use it.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import Field

from kbqa.settings import Settings, load_settings

DATA = Path(__file__).parent / "data" / "answering"
_lock = threading.Lock()
_home: Path | None = None


def shared_home() -> Path:
    """The process-wide KBQA home with the model cache and the `ops` and `hr` KBs."""
    global _home
    with _lock:
        if _home is None:
            from ingest.pipeline import ingest_paths

            home = Path(tempfile.mkdtemp(prefix="kbqa-answering-"))
            atexit.register(shutil.rmtree, home, True)
            settings = load_settings(home=home)
            for kb in ("ops", "hr"):
                report = ingest_paths(settings, kb, [DATA / kb])
                assert not report.failed, report.failed
            _home = home
        return _home


def settings_for(home: Path | None = None, **sections: dict[str, Any]) -> Settings:
    """Settings on the shared home (or `home`), short answers, plus per-test overrides."""
    overrides: dict[str, Any] = {
        "llm": {"max_new_tokens": 24},
        "retrieval": {"min_relevance": 0.45},
    }
    for section, values in sections.items():
        overrides[section] = {**overrides.get(section, {}), **values}
    return load_settings(home=home or shared_home(), overrides=overrides)


class ScriptedChat(BaseChatModel):
    """A chat model that records what it is asked and streams a scripted reply word by word.

    `reply(messages)` gives the text; `fail=True` makes any call an error, for proving that a
    code path never calls the model.
    """

    reply: Callable[[list[BaseMessage]], str] = lambda messages: "scripted answer [1]"
    fail: bool = False
    calls: list[list[BaseMessage]] = Field(default_factory=list)
    closed: list[bool] = Field(default_factory=list)
    on_chunk: Callable[[int], None] | None = None

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        if self.fail:
            raise AssertionError("the chat model must not be called here")
        self.calls.append(messages)
        try:
            for i, word in enumerate(self.reply(messages).split(" ")):
                if self.on_chunk is not None:
                    self.on_chunk(i)
                yield ChatGenerationChunk(message=AIMessageChunk(content=(" " if i else "") + word))
        finally:
            self.closed.append(True)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))


def prompt_text(messages: list[BaseMessage]) -> str:
    """The last (user) message the model was given."""
    return messages[-1].text
