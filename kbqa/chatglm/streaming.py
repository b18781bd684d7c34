"""Token ids in, text deltas out: incremental detokenization with stop strings.

Each id is turned into the bytes it stands for and fed to an incremental UTF-8 decoder, so a
character split over byte-fallback pieces (`<0xE4> <0xBD> <0xA0>` for "你") comes out only
once complete. Text that could be the start of a stop string is held back until it is known
not to be one; when a stop string completes, the text before it is emitted and the stream ends.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator, Sequence

from kbqa.chatglm.tokenizer import ChatGLM2Tokenizer

_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


class StreamDecoder:
    """Feed ids with `push`, then call `finish` once; both return the text to emit now.

    The concatenation of everything emitted equals `tokenizer.decode(ids)` cut before the first
    stop string. After `stopped` turns true, further pushes emit nothing.
    """

    def __init__(self, tokenizer: ChatGLM2Tokenizer, stop: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = [s for s in stop if s]
        # SentencePiece prints one U+FFFD per invalid byte, while Python's "replace" prints one
        # per invalid run; "surrogateescape" keeps each bad byte apart (as U+DC80..U+DCFF,
        # which valid UTF-8 never yields), and `_decode` turns each into U+FFFD.
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self._held = ""  # decoded text not yet emitted: a possible stop-string prefix
        self._first = True  # no text-bearing id seen yet (for the leading-space rule)
        self.stopped = False
        self.text = ""  # everything emitted so far

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        if self._tokenizer.is_special(token_id):
            return ""
        # The leading-space rule applies to the first text-bearing id even when that id is a
        # lone "▁" that prints as nothing, so `_first` clears on any non-special id.
        data = self._tokenizer.surface_bytes(token_id, first=self._first)
        self._first = False
        return self._release(self._decode(data))

    def finish(self) -> str:
        """End of generation: flush held text; an unfinished character becomes U+FFFD."""
        if self.stopped:
            return ""
        tail = self._release(self._decode(b"", final=True))
        if self.stopped:
            return tail
        out = tail + self._held
        self._held = ""
        self.text += out
        return out

    def _decode(self, data: bytes, final: bool = False) -> str:
        return _ESCAPED_BYTE.sub("\ufffd", self._utf8.decode(data, final=final))

    def _release(self, new_text: str) -> str:
        if not new_text:
            return ""
        text = self._held + new_text
        cut = min((i for i in (text.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            out = text[:cut]
        else:
            keep = self._partial_stop_length(text)
            self._held = text[len(text) - keep :] if keep else ""
            out = text[: len(text) - keep]
        self.text += out
        return out

    def _partial_stop_length(self, text: str) -> int:
        """Length of the longest end of `text` that is a proper prefix of some stop string."""
        best = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best


def stream_text(
    tokenizer: ChatGLM2Tokenizer, ids: Iterable[int], stop: Sequence[str] = ()
) -> Iterator[str]:
    """Yield the non-empty text deltas of a stream of ids, ending at the first stop string.

    Stops pulling ids as soon as a stop string completes, so a generator upstream is left
    suspended (close it to end generation).
    """
    decoder = StreamDecoder(tokenizer, stop)
    for token_id in ids:
        delta = decoder.push(token_id)
        if delta:
            yield delta
        if decoder.stopped:
            return
    tail = decoder.finish()
    if tail:
        yield tail
