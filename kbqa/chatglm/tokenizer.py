"""ChatGLM2's tokenizer: a SentencePiece model plus five special tokens, and its chat prompt.

The special tokens are not pieces of the SentencePiece model: they are numbered right after
its vocabulary, in the order `[MASK] [gMASK] [sMASK] sop eop` (64789..64793 for the real
64,789-piece `tokenizer.model`). End of sequence is the SentencePiece `</s>` (2) and padding is
`<unk>` (0). A prompt starts with `[gMASK] sop`, then the SentencePiece ids of the text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece

SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")

_SPACE = "\u2581"  # SentencePiece's visible space "▁"
_UNK_SURFACE = " \u2047 "  # what SentencePiece's own decoder prints for <unk>


class PromptTooLong(ValueError):
    """The question (with the system text) alone exceeds the prompt's token budget."""

    def __init__(self, n_tokens: int, max_tokens: int) -> None:
        self.n_tokens = n_tokens
        self.max_tokens = max_tokens
        super().__init__(
            f"the question is {n_tokens} tokens but the prompt may hold at most {max_tokens}; "
            "shorten the question or raise llm.context_tokens"
        )


def _format_round(index: int, question: str, answer: str | None) -> str:
    """One exchange of ChatGLM2's chat format; an open round (answer None) ends at "答："."""
    text = f"[Round {index}]\n\n问：{question}\n\n答："
    return text if answer is None else f"{text}{answer}\n\n"


class ChatGLM2Tokenizer:
    """Encode and decode ChatGLM2 token ids; build chat prompts within a token budget."""

    def __init__(self, model_file: str | Path | None = None, *, model_proto: bytes | None = None):
        if (model_file is None) == (model_proto is None):
            raise ValueError("give exactly one of model_file and model_proto")
        if model_file is not None:
            path = Path(model_file)
            if not path.is_file():
                raise FileNotFoundError(f"SentencePiece model {path} does not exist")
            self.sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        else:
            self.sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        self.n_words: int = self.sp.vocab_size()
        self.special_ids: dict[str, int] = {
            name: self.n_words + i for i, name in enumerate(SPECIAL_TOKENS)
        }
        self._special_names = {i: name for name, i in self.special_ids.items()}
        self.gmask_id, self.sop_id, self.eop_id = (
            self.special_ids[name] for name in ("[gMASK]", "sop", "eop")
        )
        self.eos_id: int = self.sp.eos_id()
        self.pad_id: int = self.sp.unk_id()
        self.strips_leading_space = self._probe_leading_space_strip()
        self._surface_cache: dict[int, bytes] = {}

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ChatGLM2Tokenizer:
        """Load from a checkpoint directory holding `tokenizer.model` (or that file itself)."""
        path = Path(path)
        return cls(path / "tokenizer.model" if path.is_dir() else path)

    @property
    def vocab_size(self) -> int:
        return self.n_words + len(SPECIAL_TOKENS)

    @property
    def prefix_ids(self) -> list[int]:
        return [self.gmask_id, self.sop_id]

    def is_special(self, token_id: int) -> bool:
        """ChatGLM2's own specials, SentencePiece control tokens (<s>, </s>) and ids past the
        vocabulary (the model's embedding is padded to 65,024 rows) carry no text."""
        return token_id >= self.n_words or token_id < 0 or bool(self.sp.is_control(token_id))

    def encode(self, text: str, add_prefix: bool = True) -> list[int]:
        # Special-token names inside `text` stay plain text, so user input cannot inject them.
        ids: list[int] = self.sp.encode(text)
        return self.prefix_ids + ids if add_prefix else ids

    def count_tokens(self, text: str) -> int:
        return len(self.sp.encode(text))

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            return str(self.sp.decode([i for i in ids if not self.is_special(i)]))
        # Decode runs of ordinary ids with SentencePiece and spell the specials out by name.
        parts: list[str] = []
        run: list[int] = []
        for i in ids:
            if i in self._special_names:
                parts.append(str(self.sp.decode(run)))
                parts.append(self._special_names[i])
                run = []
            elif 0 <= i < self.n_words:
                run.append(i)
        parts.append(str(self.sp.decode(run)))
        return "".join(parts)

    def surface_bytes(self, token_id: int, first: bool) -> bytes:
        """The UTF-8 bytes one id contributes to decoded text, as SentencePiece would print it.

        A byte-fallback piece (<0xE4>) is a single raw byte, possibly part of a multi-byte
        character; `first` says whether this is the first text-bearing id of the sequence,
        where SentencePiece drops the space of a leading "▁".
        """
        if self.is_special(token_id):
            return b""
        if first and self.strips_leading_space:
            piece: str = self.sp.id_to_piece(token_id)
            if piece.startswith(_SPACE) and not self.sp.is_byte(token_id):
                return piece[1:].replace(_SPACE, " ").encode()
        cached = self._surface_cache.get(token_id)
        if cached is None:
            cached = self._surface(token_id)
            self._surface_cache[token_id] = cached
        return cached

    def _surface(self, token_id: int) -> bytes:
        piece: str = self.sp.id_to_piece(token_id)
        if self.sp.is_byte(token_id):
            return bytes([int(piece[3:5], 16)])  # "<0xE4>" -> b"\xe4"
        if self.sp.is_unknown(token_id):
            return _UNK_SURFACE.encode()
        return piece.replace(_SPACE, " ").encode()

    def _probe_leading_space_strip(self) -> bool:
        """Whether SentencePiece's decoder drops a sequence's leading "▁" (it does when the model
        adds a dummy prefix); decided by decoding one such piece rather than parsing the proto."""
        for i in range(self.n_words):
            if self.sp.is_byte(i) or self.sp.is_control(i) or self.sp.is_unknown(i):
                continue
            piece: str = self.sp.id_to_piece(i)
            if piece.startswith(_SPACE):
                return bool(self.sp.decode([i]) == piece[1:].replace(_SPACE, " "))
        return False

    # -- chat prompt ------------------------------------------------------------------------

    def build_prompt(
        self, query: str, history: Sequence[tuple[str, str]] = (), system: str = ""
    ) -> str:
        """ChatGLM2's prompt text: past rounds numbered from 1, then the open round.

        ChatGLM2 has no system role; `system` text is put in front of the first question shown,
        so it survives when old rounds are dropped.
        """
        rounds = [*history, (query, None)]
        parts = []
        for n, (question, answer) in enumerate(rounds, start=1):
            if n == 1 and system:
                question = f"{system}\n\n{question}" if question else system
            parts.append(_format_round(n, question, answer))
        return "".join(parts)

    def build_chat_input(
        self,
        query: str,
        history: Sequence[tuple[str, str]] = (),
        max_tokens: int | None = None,
        system: str = "",
    ) -> list[int]:
        """Prompt ids (with the [gMASK] sop prefix) of `query` after as much recent history as fits.

        Whole rounds are dropped oldest first until the prompt fits `max_tokens`; the question is
        never cut: if it does not fit on its own, `PromptTooLong` is raised.
        """

        def ids_keeping(n: int) -> list[int]:
            # The prompt is encoded as one text, as the original does: encoding rounds
            # separately and concatenating would add a dummy-prefix "▁" at every seam.
            kept = history[len(history) - n :] if n else ()
            return self.encode(self.build_prompt(query, kept, system))

        full = ids_keeping(len(history))
        if max_tokens is None or len(full) <= max_tokens:
            return full
        bare = ids_keeping(0)
        if len(bare) > max_tokens:
            raise PromptTooLong(len(bare), max_tokens)
        # Largest number of recent rounds that fits. Length grows with every round kept, so
        # binary search (O(log n) encodes of the whole prompt); `low` only ever takes counts
        # that were checked to fit.
        low, high, best = 0, len(history) - 1, bare  # 0 rounds fit, all of them do not
        while low < high:
            mid = (low + high + 1) // 2
            ids = ids_keeping(mid)
            if len(ids) <= max_tokens:
                low, best = mid, ids
            else:
                high = mid - 1
        return best
