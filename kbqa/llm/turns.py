"""Chat messages as the (system, past rounds, question) triple that round-based prompts need.

ChatGLM2 (and the prompt templates of the chain) know rounds of question and answer, not a
list of role-tagged messages; this is the one place that maps LangChain messages onto them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from langchain_core.messages import BaseMessage, ChatMessage


@dataclass
class ChatTurns:
    query: str
    history: list[tuple[str, str]] = field(default_factory=list)
    system: str = ""


def _role(message: BaseMessage) -> str:
    kind = message.role if isinstance(message, ChatMessage) else message.type
    if kind in ("system", "developer"):
        return "system"
    if kind in ("ai", "assistant"):
        return "ai"
    return "human"  # human, user, and tool/function results, which only a person can relay


def _text(message: BaseMessage) -> str:
    if isinstance(message.content, str):
        return message.content
    parts = []
    for block in message.content:
        if isinstance(block, str):
            parts.append(block)
        elif block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        else:
            raise ValueError(f"ChatGLM2 reads text only; got a {block.get('type')!r} block")
    return "".join(parts)


def messages_to_turns(messages: Sequence[BaseMessage]) -> ChatTurns:
    """Split messages into system text, past (question, answer) rounds and the open question.

    Consecutive messages of one role are joined with a blank line; an answer with no question
    before it gets an empty question. The last message must be from the user.
    """
    system: list[str] = []
    history: list[tuple[str, str]] = []
    questions: list[str] = []
    answers: list[str] = []
    for message in messages:
        role, text = _role(message), _text(message)
        if role == "system":
            system.append(text)
        elif role == "ai":
            answers.append(text)
        else:
            if answers:
                history.append(("\n\n".join(questions), "\n\n".join(answers)))
                questions, answers = [], []
            questions.append(text)
    if answers or not questions:
        raise ValueError("ChatGLM2 needs the last message to be the user's question")
    return ChatTurns("\n\n".join(questions), history, "\n\n".join(system))
