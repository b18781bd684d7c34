"""Incremental detokenization: whole characters only, stop strings held back and cut."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from kbqa.chatglm.streaming import StreamDecoder, stream_text
from kbqa.chatglm.tokenizer import ChatGLM2Tokenizer


@pytest.fixture(scope="module")
def tok(sp_model_path: Path) -> ChatGLM2Tokenizer:
    return ChatGLM2Tokenizer(sp_model_path)


def deltas(tok: ChatGLM2Tokenizer, ids: list[int], stop: list[str] | None = None) -> list[str]:
    decoder = StreamDecoder(tok, stop or [])
    out = [decoder.push(i) for i in ids]
    out.append(decoder.finish())
    return out


def test_byte_fallback_pieces_are_held_until_the_character_completes(
    tok: ChatGLM2Tokenizer,
) -> None:
    text = "好😀龘🎉!"
    ids = tok.encode(text)
    assert sum(tok.sp.is_byte(i) for i in ids[2:]) >= 11  # three emoji/rare chars as bytes
    out = deltas(tok, ids)
    assert "".join(out) == text
    for delta in out:
        assert "\ufffd" not in delta
        delta.encode("utf-8")  # no lone surrogates either
    # The four bytes of 😀 yield nothing, nothing, nothing, then the whole character.
    emoji = tok.encode("😀", add_prefix=False)
    emoji = [i for i in emoji if tok.sp.is_byte(i)]
    decoder = StreamDecoder(tok)
    decoder.push(tok.encode("a", add_prefix=False)[-1])
    assert [decoder.push(i) for i in emoji] == ["", "", "", "😀"]


def test_stream_equals_decode_on_random_ids(tok: ChatGLM2Tokenizer) -> None:
    # Random ids include byte pieces in broken orders, controls, specials and padded-vocab
    # ids; the stream must print exactly what SentencePiece's decoder prints for the whole.
    rng = random.Random(1234)
    for _ in range(2000):
        ids = [rng.randrange(tok.vocab_size + 3) for _ in range(rng.randrange(12))]
        assert "".join(deltas(tok, ids)) == tok.decode(ids), ids


def test_leading_space_rule_matches_sentencepiece(tok: ChatGLM2Tokenizer) -> None:
    for text in [" lead", "  two", "plain", "你好"]:
        ids = tok.encode(text, add_prefix=False)
        with_controls = [tok.gmask_id, tok.sop_id, tok.eos_id, *ids]
        assert "".join(deltas(tok, with_controls)) == tok.decode(with_controls)


def test_unfinished_character_at_the_end_becomes_a_replacement(tok: ChatGLM2Tokenizer) -> None:
    emoji = [i for i in tok.encode("😀", add_prefix=False) if tok.sp.is_byte(i)]
    ids = [*tok.encode("ok", add_prefix=False), *emoji[:2]]
    out = deltas(tok, ids)
    assert out[-1] == "\ufffd\ufffd" == tok.decode(emoji[:2])
    assert "".join(out) == tok.decode(ids)


def test_stop_string_is_cut_and_not_emitted(tok: ChatGLM2Tokenizer) -> None:
    ids = tok.encode("你好！\n\n问：还有吗", add_prefix=False)
    decoder = StreamDecoder(tok, ["\n\n问："])
    out = [decoder.push(i) for i in ids]
    assert decoder.stopped
    assert "".join(out) == "你好！" == decoder.text
    assert decoder.finish() == "" and decoder.push(ids[0]) == ""


def test_possible_stop_prefix_is_held_then_released(tok: ChatGLM2Tokenizer) -> None:
    ids = tok.encode("go STay here", add_prefix=False)
    split = next(k for k in range(len(ids)) if tok.decode(ids[:k]) == "go ST")
    decoder = StreamDecoder(tok, ["STOP"])
    emitted = [decoder.push(i) for i in ids[:split]]
    assert "".join(emitted) == "go "  # "ST" might begin "STOP"
    emitted = [decoder.push(i) for i in ids[split:]]
    assert "".join(emitted) + decoder.finish() == "STay here"
    assert not decoder.stopped and decoder.text == "go STay here"


def test_held_prefix_is_flushed_at_the_end(tok: ChatGLM2Tokenizer) -> None:
    out = deltas(tok, tok.encode("answer\n\n", add_prefix=False), ["\n\n问："])
    assert out[-1] == "\n\n" and "".join(out) == "answer\n\n"


def test_earliest_of_several_stops_wins_and_stops_span_byte_pieces(
    tok: ChatGLM2Tokenizer,
) -> None:
    out = deltas(tok, tok.encode("abc 😀 def xyz", add_prefix=False), ["xyz", "😀"])
    assert "".join(out) == "abc "
    out = deltas(tok, tok.encode("abc def xyz", add_prefix=False), ["xyz", "", "def"])
    assert "".join(out) == "abc "


def test_stream_text_stops_pulling_ids_after_a_stop(tok: ChatGLM2Tokenizer) -> None:
    ids = tok.encode("one two three four", add_prefix=False)
    pulled: list[int] = []

    def source() -> Iterator[int]:
        for i in ids:
            pulled.append(i)
            yield i

    assert "".join(stream_text(tok, source(), stop=["two"])) == "one "
    assert len(pulled) < len(ids)
    assert "".join(stream_text(tok, iter(ids))) == "one two three four"
