"""ChatGLM2Tokenizer on a SentencePiece model trained at test time (tests/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kbqa.chatglm.tokenizer import SPECIAL_TOKENS, ChatGLM2Tokenizer, PromptTooLong


@pytest.fixture(scope="module")
def tok(sp_model_path: Path) -> ChatGLM2Tokenizer:
    return ChatGLM2Tokenizer(sp_model_path)


def test_specials_follow_the_sentencepiece_vocabulary(tok: ChatGLM2Tokenizer) -> None:
    n = tok.sp.vocab_size()
    assert tok.n_words == n
    assert tok.special_ids == {
        "[MASK]": n,
        "[gMASK]": n + 1,
        "[sMASK]": n + 2,
        "sop": n + 3,
        "eop": n + 4,
    }
    assert tok.vocab_size == n + len(SPECIAL_TOKENS)
    assert (tok.gmask_id, tok.sop_id, tok.eop_id) == (n + 1, n + 3, n + 4)
    assert (tok.eos_id, tok.pad_id) == (2, 0)


def test_encode_adds_the_gmask_sop_prefix(tok: ChatGLM2Tokenizer) -> None:
    bare = tok.encode("你好", add_prefix=False)
    assert bare and all(i < tok.n_words for i in bare)
    assert tok.encode("你好") == [tok.gmask_id, tok.sop_id, *bare]
    assert tok.encode("") == tok.prefix_ids


def test_special_names_in_text_are_not_special(tok: ChatGLM2Tokenizer) -> None:
    ids = tok.encode("[gMASK] sop", add_prefix=False)
    assert tok.gmask_id not in ids and tok.sop_id not in ids


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over the lazy dog.",
        "知识库问答系统可以回答你的问题。",
        "Mixed 中文 and English, 数字 2024！",
        "emoji 😀🎉 and rare 龘 characters",
        "line one\nline two\n\n  indented\ttab",
        " leading and trailing spaces  ",
    ],
)
def test_round_trip(tok: ChatGLM2Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


def test_emoji_goes_through_byte_fallback(tok: ChatGLM2Tokenizer) -> None:
    pieces = [tok.sp.id_to_piece(i) for i in tok.encode("😀", add_prefix=False)]
    assert [p for p in pieces if p.startswith("<0x")] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]


def test_decode_skips_specials_unless_asked(tok: ChatGLM2Tokenizer) -> None:
    ids = [*tok.encode("你好"), tok.eos_id, tok.eop_id, 65_000]  # 65,000: a padded-vocab row
    assert tok.decode(ids) == "你好"
    assert tok.decode(ids, skip_special_tokens=False) == "[gMASK]sop你好eop"


def test_prompt_format_with_history(tok: ChatGLM2Tokenizer) -> None:
    history = [("你好", "你好！"), ("What is kbqa?", "A QA tool.")]
    assert tok.build_prompt("谢谢", history) == (
        "[Round 1]\n\n问：你好\n\n答：你好！\n\n"
        "[Round 2]\n\n问：What is kbqa?\n\n答：A QA tool.\n\n"
        "[Round 3]\n\n问：谢谢\n\n答："
    )
    assert tok.build_prompt("你好") == "[Round 1]\n\n问：你好\n\n答："


def test_system_text_goes_before_the_first_question(tok: ChatGLM2Tokenizer) -> None:
    assert tok.build_prompt("q2", [("q1", "a1")], system="Be brief.") == (
        "[Round 1]\n\n问：Be brief.\n\nq1\n\n答：a1\n\n[Round 2]\n\n问：q2\n\n答："
    )


def test_chat_input_is_the_prompt_encoded_whole(tok: ChatGLM2Tokenizer) -> None:
    history = [("你好", "你好！有什么可以帮你的吗？")]
    ids = tok.build_chat_input("北京是中国的首都吗？", history)
    assert ids == tok.encode(tok.build_prompt("北京是中国的首都吗？", history))
    assert ids[:2] == tok.prefix_ids


def test_oldest_history_is_dropped_first(tok: ChatGLM2Tokenizer) -> None:
    history = [(f"question {i}", f"answer {i} " * 5) for i in range(1, 7)]
    query = "最后的问题"
    last_two = tok.encode(tok.build_prompt(query, history[-2:]))
    ids = tok.build_chat_input(query, history, max_tokens=len(last_two))
    assert ids == last_two
    text = tok.decode(ids)
    # The kept rounds are renumbered from 1 and are the most recent ones.
    assert text.startswith("[Round 1]\n\n问：question 5\n\n")
    assert "question 4" not in text and text.endswith("[Round 3]\n\n问：最后的问题\n\n答：")
    # One token short of that: only the newest round fits.
    ids = tok.build_chat_input(query, history, max_tokens=len(last_two) - 1)
    assert ids == tok.encode(tok.build_prompt(query, history[-1:]))
    # Everything fits: nothing dropped.
    everything = tok.encode(tok.build_prompt(query, history))
    assert tok.build_chat_input(query, history, max_tokens=len(everything)) == everything


def test_system_text_survives_dropping(tok: ChatGLM2Tokenizer) -> None:
    history = [("q1 " * 20, "a1 " * 20), ("q2", "a2")]
    ids = tok.build_chat_input("q3", history, max_tokens=60, system="SYS")
    text = tok.decode(ids)
    assert text.startswith("[Round 1]\n\n问：SYS\n\nq2\n\n答：a2") and "q1" not in text
    assert len(ids) <= 60


def test_query_too_long_raises(tok: ChatGLM2Tokenizer) -> None:
    query = "这是一个非常长的问题。" * 50
    needed = len(tok.encode(tok.build_prompt(query)))
    with pytest.raises(PromptTooLong) as err:
        tok.build_chat_input(query, [("q", "a")], max_tokens=needed - 1)
    assert (err.value.n_tokens, err.value.max_tokens) == (needed, needed - 1)
    assert "llm.context_tokens" in str(err.value)
    assert len(tok.build_chat_input(query, [("q", "a")], max_tokens=needed)) == needed


def test_from_pretrained_takes_a_directory(sp_model_path: Path) -> None:
    tok = ChatGLM2Tokenizer.from_pretrained(sp_model_path.parent)
    assert tok.n_words == ChatGLM2Tokenizer(sp_model_path).n_words
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ChatGLM2Tokenizer.from_pretrained(sp_model_path.parent / "nowhere")


_REAL = os.environ.get("KBQA_CHATGLM2_PATH", "")


@pytest.mark.skipif(not _REAL, reason="KBQA_CHATGLM2_PATH does not name a real checkpoint")
def test_real_chatglm2_ids() -> None:
    # Known-good ids: the original chatglm2-6b tokenizer's outputs on these texts, copied here.
    tok = ChatGLM2Tokenizer.from_pretrained(_REAL)
    assert tok.n_words == 64789
    assert tok.special_ids == {
        "[MASK]": 64789,
        "[gMASK]": 64790,
        "[sMASK]": 64791,
        "sop": 64792,
        "eop": 64793,
    }
    assert (tok.eos_id, tok.pad_id) == (2, 0)
    assert tok.encode("你好") == [64790, 64792, 36474, 54591]
    expected = [64790, 64792, 790, 30951, 517, 30910, 30939, 30996, 13, 13]
    expected += [54761, 31211, 39701, 13, 13, 55437, 31211]
    assert tok.encode("[Round 1]\n\n问：你好\n\n答：") == expected
    assert tok.build_chat_input("你好") == expected
    assert tok.decode(expected) == "[Round 1]\n\n问：你好\n\n答："
