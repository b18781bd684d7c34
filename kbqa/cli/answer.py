"""`kbqa ask` and `kbqa chat`: thin terminal front ends over kbqa.chain.QAChain.

The answer streams to stdout as it is generated, then its sources, each with its evidence
sentences quoted «…» (highlighted on a terminal); rich styling on a terminal, plain text when
piped. Where the generated answer is replaced by sentences quoted from the sources
(kbqa.answer_mode), the quote follows a separator line. Errors are one line on stderr: exit 2
for usage and configuration errors, never a traceback.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kbqa.cli.common import (
    EXIT_PARTIAL,
    ConfigOption,
    HomeOption,
    JsonOption,
    KbsOption,
    TopKOption,
    command,
    fail,
    print_json,
    stderr,
    stdout,
)
from kbqa.settings import Settings

if TYPE_CHECKING:
    from kbqa.answer import Answer, Source
    from kbqa.chain import QAChain

EVIDENCE_HEADINGS = {
    "answer": "Sources (« » supports the answer):",
    "question": "Sources (« » best matches the question):",
}
CHAT_HELP = (
    "kbqa chat — 输入问题开始对话；clear 清空历史，Ctrl-C 停止当前回答，exit 退出。\n"
    "Type a question; `clear` resets the history, Ctrl-C stops the answer, `exit` quits."
)


def register(app: typer.Typer) -> None:
    """Add `ask` and `chat` to the kbqa app."""
    app.command()(ask)
    app.command()(chat)


def _chain(settings: Settings, kbs: list[str]) -> QAChain:
    from kbqa.chain import QAChain

    chain = QAChain.from_settings(settings)
    if stderr.is_terminal:
        with stderr.status("loading the models…"):
            chain.warm_up(kbs)
    else:
        chain.warm_up(kbs)
    return chain


def read_history(path: Path) -> Any:
    """The JSON in a --history file ([[question, answer], …]; the chain checks the shape)."""
    from kbqa.errors import UsageError

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read history file {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"history file {path} is not JSON: {e}") from None


def read_questions(path: Path) -> list[dict[str, Any]]:
    """JSON lines of {"question", "history"?}, all checked before any model loads."""
    from kbqa.errors import UsageError
    from kbqa.prompting import check_history

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read questions file {path}: {e}") from None
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path} line {number} is not JSON: {e}") from None
        if not isinstance(item, dict) or not isinstance(item.get("question"), str):
            raise UsageError(f'{path} line {number} is not an object with a "question" string')
        try:
            check_history(item.get("history"))
        except UsageError as e:
            raise UsageError(f"{path} line {number}: {e}") from None
        items.append(item)
    if not items:
        raise UsageError(f"questions file {path} holds no questions")
    return items


def print_sources(sources: list[Source], basis: str | None = None) -> None:
    """The sources, each followed by its evidence sentences, quoted and indented."""
    if not sources:
        return
    stdout.print()
    stdout.print(EVIDENCE_HEADINGS.get(basis or "", "Sources:"), style="bold", markup=False)
    for s in sources:
        where = s.source + (f" › {s.heading}" if s.heading else "")
        where += f" (p. {s.page})" if s.page is not None else ""
        kb = f" [{s.kb}]" if s.kb else ""
        stdout.print(f"[{s.index}] {where}{kb}  {s.score:.2f}", style="dim", markup=False)
        for evidence in s.evidence or ():
            quote = " ".join(evidence.text.split())
            stdout.print(f"    «{quote}»", style="bold yellow", markup=False, highlight=False)


def stream_answer(
    chain: QAChain,
    question: str,
    kbs: list[str],
    history: Any,
    top_k: int | None,
    cancel: threading.Event | None = None,
) -> Answer:
    """Print the answer as it is generated, then its sources; return it."""
    from kbqa.answer import Answer, DoneEvent, SourcesEvent, TokenEvent
    from kbqa.answer_mode import REPLACED_NOTE

    sources: list[Source] = []
    pending = ""  # whitespace held back: the answer printed matches the stripped answer
    started = False
    for event in chain.stream(question, kbs, history, top_k, cancel):
        if isinstance(event, SourcesEvent):
            sources = event.sources
        elif isinstance(event, TokenEvent):
            text = pending + event.text
            body = text.rstrip()
            pending = text[len(body) :]
            if not started:
                body = body.lstrip()
            if body:
                stdout.print(body, end="", markup=False, highlight=False)
                started = True
        elif isinstance(event, DoneEvent):
            if event.cancelled:
                stdout.print(" [stopped]", style="yellow", end="", markup=False)
            stdout.print()
            if event.generated is not None:  # what streamed was replaced by a quote
                stdout.print(REPLACED_NOTE, style="bold red", markup=False, highlight=False)
                stdout.print(event.answer, markup=False, highlight=False)
            answer = Answer.from_done(event, sources)
            print_sources(answer.sources, answer.evidence_basis)
            return answer
    raise RuntimeError("the answer stream ended without a DoneEvent")


def ask(
    question: Annotated[str | None, typer.Argument(help="The question.")] = None,
    kb: KbsOption = None,
    history: Annotated[
        Path | None,
        typer.Option(
            "--history", help="JSON file of earlier turns, a list of (question, answer) pairs."
        ),
    ] = None,
    questions: Annotated[
        Path | None,
        typer.Option("--questions", help='JSON lines {"question", "history"?}; one answer each.'),
    ] = None,
    json_out: JsonOption = False,
    top_k: TopKOption = None,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Answer a question from the knowledge base(s), citing the passages used."""
    if (question is None) == (questions is None):
        raise fail("give either a QUESTION or --questions FILE")
    kbs = kb or ["default"]
    failed = False
    with command(home, config, json_out) as run:
        if questions is not None:
            if history is not None:
                raise fail('--history does not combine with --questions (give "history" per line)')
            items = read_questions(questions)
            chain = _chain(run.settings, kbs)
            for item in items:
                failed |= not _answer_line(chain, item, kbs, top_k)
        else:
            past = read_history(history) if history is not None else None
            chain = _chain(run.settings, kbs)
            if json_out:
                print_json(chain.ask(question or "", kbs, past, top_k).to_json())
            else:
                stream_answer(chain, question or "", kbs, past, top_k)
    if failed:
        raise typer.Exit(EXIT_PARTIAL)


def _answer_line(chain: QAChain, item: dict[str, Any], kbs: list[str], top_k: int | None) -> bool:
    """One --questions line → one JSON line; an error becomes {"question","error"}."""
    from kbqa.errors import UsageError

    try:
        answer = chain.ask(item["question"], kbs, item.get("history"), top_k)
    except UsageError as e:  # this question is unusable (empty, too long); go on with the rest
        print_json({"question": item["question"], "error": str(e)})
        return False
    print_json(answer.to_json())
    return True


@contextmanager
def ctrl_c_sets(event: threading.Event) -> Iterator[None]:
    """While inside, Ctrl-C sets `event` instead of raising KeyboardInterrupt."""

    def handler(signum: int, frame: FrameType | None) -> None:
        event.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def chat(
    kb: KbsOption = None,
    top_k: TopKOption = None,
    json_out: JsonOption = False,
    home: HomeOption = None,
    config: ConfigOption = None,
) -> None:
    """Interactive question answering with history (clear, Ctrl-C, exit)."""
    from kbqa.errors import KBQAError
    from kbqa.llm.errors import LLMUnavailable
    from kbqa.storage.errors import StorageError

    kbs = kb or ["default"]
    with command(home, config, json_out) as run:
        chain = _chain(run.settings, kbs)
    # The prompt loop runs outside the frame: a question that fails is reported, and the
    # session goes on.
    if not json_out:
        stdout.print(CHAT_HELP, style="bold", markup=False)
    history: list[list[str]] = []
    while True:
        try:
            line = input("\n> " if sys.stdin.isatty() else "")
        except EOFError:
            break
        except KeyboardInterrupt:  # at the prompt: nothing to stop
            stdout.print("\n(type exit to quit)", style="dim", markup=False)
            continue
        text = line.strip()
        if not text:
            continue
        if text.lower() in ("exit", "quit"):
            break
        if text.lower() == "clear":
            history = []
            if not json_out:
                stdout.print("(history cleared / 对话历史已清空)", style="dim", markup=False)
            continue
        cancel = threading.Event()
        try:
            with ctrl_c_sets(cancel):
                if json_out:
                    answer = chain.ask(text, kbs, history, top_k, cancel)
                    print_json(answer.to_json())
                else:
                    answer = stream_answer(chain, text, kbs, history, top_k, cancel)
        except (KBQAError, LLMUnavailable, StorageError) as e:  # this one failed; go on
            stderr.print(f"error: {e}", markup=False, highlight=False)
            continue
        history.append([text, answer.answer])
