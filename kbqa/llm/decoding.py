"""Token-by-token decoding for the local model: sampling, stop strings, loop guard.

`generate` yields text as it is decoded and holds back only what could still turn into a stop
string or a repeated line, so a stream never shows text the final answer would not contain.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kbqa.errors import InputTooLong

if TYPE_CHECKING:
    import torch

    from kbqa.llm.local_model import LocalModel


@dataclass
class Step:
    """One piece of streamed output. `finish_reason` is set on the last one only."""

    text: str
    tokens: int
    """Tokens generated so far."""
    finish_reason: str | None = None


def _penalise(logits: torch.Tensor, generated: list[int], penalty: float) -> torch.Tensor:
    """Make tokens the answer already used less likely (CTRL's rule: positive logits divided
    by `penalty`, negative ones multiplied). Only the answer's own tokens count, not the
    prompt's: an answer should be free to repeat the passages' words once."""
    import torch

    ids = torch.tensor(sorted(set(generated)))
    seen = logits[ids]
    logits = logits.clone()
    logits[ids] = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits


def _pick(logits: torch.Tensor, temperature: float, top_p: float) -> int:
    import torch

    if temperature <= 0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest head of the distribution whose mass reaches top_p (at least one).
        drop = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1).item())


def _first_stop(text: str, stops: list[str], start: int) -> int:
    """Index of the earliest stop string in `text[start:]`, or -1.

    Text that could begin a stop string is held back, never returned, so no stop string
    starts before `start`.
    """
    found = [i for s in stops if (i := text.find(s, start)) >= 0]
    return min(found, default=-1)


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that could still grow into a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class _RepeatGuard:
    """Ends an answer where it starts repeating one of its own lines verbatim.

    Small models fall into loops ("问题？\n\n问题？\n\n…" until the token limit). A line that
    equals an earlier line of the answer (both stripped, at least MIN_LINE characters) ends the
    generation just before it; while the current line still reads like the start of an earlier
    one it is held back, so a stream never shows the repeat.
    """

    MIN_LINE = 6

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.checked = 0  # text before this index is in complete lines already looked at

    def cut(self, text: str) -> int:
        """Index where `text` starts repeating an earlier line, or -1."""
        while (newline := text.find("\n", self.checked)) >= 0:
            line = text[self.checked : newline].strip()
            if line in self.seen:
                return self.checked
            if len(line) >= self.MIN_LINE:
                self.seen.add(line)
            self.checked = newline + 1
        return -1

    def hold_from(self, text: str) -> int:
        """Where to stop returning text: the start of a line that may become a repeat."""
        partial = text[self.checked :].strip()
        if partial and any(line.startswith(partial) for line in self.seen):
            return self.checked
        return len(text)


def generate(
    lm: LocalModel,
    prompt_ids: list[int],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    stop: list[str] | None = None,
    stop_repeats: bool = False,
    deadline: float | None = None,
) -> Generator[Step, None, None]:
    """Stream the continuation of `prompt_ids` as text pieces, one per decoded token or so.

    Stops at an end-of-turn token, at `max_new_tokens`, at the first stop string (which is not
    returned), where the answer starts repeating one of its lines (with `stop_repeats`, see
    _RepeatGuard) or at `deadline` (time.monotonic()). Closing the iterator stops the
    computation: nothing runs between two pieces.
    """
    import torch

    stops = [s for s in (stop or []) if s]
    room = lm.context_window - len(prompt_ids)
    if room <= 0:
        raise InputTooLong(
            f"the prompt is {len(prompt_ids)} tokens; {lm.name} reads at most {lm.context_window}"
        )
    budget = min(max_new_tokens, room)
    generated: list[int] = []
    emitted = 0  # characters of the decoded continuation already returned
    finish = "length"
    guard = _RepeatGuard() if stop_repeats else None
    with torch.inference_mode():
        out = lm.model(input_ids=torch.tensor([prompt_ids]), use_cache=True, **lm.last_logits_only)
        while len(generated) < budget:
            logits = out.logits[0, -1]
            if repetition_penalty != 1.0 and generated:
                logits = _penalise(logits, generated, repetition_penalty)
            token = _pick(logits, temperature, top_p)
            if token in lm.eos_ids:
                finish = "stop"
                break
            generated.append(token)
            text = lm.tokenizer.decode(generated, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # a character split across byte-level tokens
                piece = ""
            else:
                hit = _first_stop(text, stops, emitted)
                repeat = guard.cut(text) if guard else -1
                if hit >= 0 or repeat >= 0:
                    end = min(i for i in (hit, repeat) if i >= 0)
                    yield Step(
                        text[emitted:end], len(generated), "stop" if end == hit else "repeat"
                    )
                    return
                safe = len(text) - _held_back(text, stops)
                if guard:
                    safe = min(safe, guard.hold_from(text))
                piece, emitted = text[emitted:safe], max(emitted, safe)
            if piece:
                yield Step(piece, len(generated))
            if deadline is not None and time.monotonic() > deadline:
                finish = "timeout"
                break
            cache = getattr(out, lm.cache_arg)
            out = lm.model(
                input_ids=torch.tensor([[token]]), use_cache=True, **{lm.cache_arg: cache}
            )
    text = lm.tokenizer.decode(generated, skip_special_tokens=True).rstrip("\ufffd")
    hit = _first_stop(text, stops, emitted)
    if hit >= 0:
        text, finish = text[:hit], "stop"
    if guard:
        # A loop cut off by the token limit: drop its unfinished copy of an earlier line.
        repeat = guard.cut(text)
        end = repeat if repeat >= 0 else guard.hold_from(text)
        if end < len(text):
            text, finish = text[: max(end, emitted)], "repeat"
    yield Step(text[emitted:], len(generated), finish)
