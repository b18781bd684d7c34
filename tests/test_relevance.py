"""The 0..1 relevance (kbqa.relevance): terms, lexical share, the CJK dense weight, follow-ups."""

from __future__ import annotations

import re

import pytest

from kbqa.named_documents import named_documents
from kbqa.relevance import (
    CJK_DENSE_WEIGHT,
    CROSS_LANGUAGE_SHARE,
    MISSING_KIND_FACTOR,
    MISSING_NUMBER_FACTOR,
    SCATTERED_FACTOR,
    dense_weight,
    lexical_score,
    query_terms,
    relevance,
    relevance_of,
    scattered,
    value_passage,
    with_relevance,
)
from kbqa.storage.types import SearchHit


def hit(
    text: str, score: float = 0.0, heading: str | None = None, source: str = "a.md"
) -> SearchHit:
    return SearchHit("c1", "d1", text, source, None, heading, score)


def test_terms_drop_function_words_and_rejoin_split_words() -> None:
    assert query_terms("公司的年假有多少天？") == {"公司": 1, "年假": 1}
    assert query_terms("Lumen-7B 在 FP16 下需要多少显存？") == {"lumen-7b": 2, "fp16": 2, "显存": 1}
    assert query_terms("How long are Harbor backups kept?") == {
        "harbor": 2,
        "backups": 2,
        "kept": 2,
    }
    assert query_terms("那 INT4 呢？") == {"int4": 2}
    assert query_terms("什么？") == {}


def test_lexical_share_is_weighted_and_whole_word() -> None:
    chunk = hit("Snapshots of the Harbor queue are kept for 14 days.")
    # harbor, kept found; "backups" is not (only "backup" would match it as a plural).
    assert lexical_score("How long are Harbor backups kept?", chunk) == pytest.approx(4 / 6)
    assert lexical_score("print statement", hit("the int type")) == 0.0
    assert lexical_score("Are backups kept?", hit("one backup is kept")) == 1.0


def test_long_chinese_terms_earn_partial_credit() -> None:
    chunk = hit("支持繁体分词和自定义词典。")
    # 处理 is missing; 繁体中文 is not there whole, but 繁体 (1 of its 3 pairs) is.
    assert lexical_score("能处理繁体中文吗", chunk) == pytest.approx((0 + 1 / 3) / 2)


def test_heading_and_file_name_count_as_part_of_the_chunk() -> None:
    chunk = hit("需要约 5.5 GB 显存。", heading="Lumen-7B 部署手册 > 量化版本", source="lumen.md")
    # lumen-7b (2) from the heading, 版本 (1) inside 量化版本; int4 (2) is missing.
    assert lexical_score("Lumen-7B 的 INT4 版本", chunk) == pytest.approx(3 / 5)


def test_dense_counts_half_for_chinese_with_an_english_only_embedding() -> None:
    assert dense_weight("红烧肉怎么做？", "default") == CJK_DENSE_WEIGHT
    assert dense_weight("How are you?", "default") == 1.0
    assert dense_weight("红烧肉怎么做？", "/models/bge-small-zh-v1.5") == 1.0
    assert dense_weight("红烧肉怎么做？", "/models/m3e-base") == 1.0
    assert dense_weight("红烧肉怎么做？", "/models/all-mpnet-base-v2") == CJK_DENSE_WEIGHT
    chunk = hit("无关的内容", score=0.46)
    assert relevance("红烧肉怎么做？", chunk, weight=CJK_DENSE_WEIGHT) == pytest.approx(0.23)
    assert relevance("红烧肉怎么做？", chunk) == pytest.approx(0.46)


def test_follow_up_needs_a_term_of_the_new_question() -> None:
    joined = "Lumen-7B 在 FP16 下需要多少显存？\n红烧肉怎么做？"
    chunk = hit("Lumen-7B 以 FP16 加载需要约 14 GB 显存。")
    assert lexical_score(joined, chunk) > 0.6
    assert lexical_score(joined, chunk, focus="红烧肉怎么做？") == 0.0
    follow_up = "Lumen-7B 在 FP16 下需要多少显存？\n那 INT4 呢？"
    int4 = hit("INT4 量化后需要约 5.5 GB 显存。", heading="Lumen-7B 部署手册")
    assert lexical_score(follow_up, int4, focus="那 INT4 呢？") == pytest.approx(5 / 7)


def test_relevance_is_stored_on_the_hit() -> None:
    chunk = with_relevance("Harbor", hit("Harbor queue", score=0.2))
    assert relevance_of(chunk) == 1.0 and chunk.extra["relevance"] == 1.0
    assert relevance_of(hit("x", score=0.3)) == 0.3  # not scored yet: the dense score


@pytest.mark.parametrize(
    ("term", "text", "found"),
    [
        ("int", "print(int4)", False),
        ("int4", "使用int4量化", True),  # Chinese characters end a Latin word as a space does
        ("cpu", "只用cpu运行", True),
        ("int4", "使用int4x量化", False),
        ("int4", "使用 int4 量化", True),
        ("backup", "two backups_daily", True),  # "_" ends a word
        ("backup", "backupses", False),
        ("class", "two classes", True),
        ("backups", "one backup.", True),  # the singular of a plural term
        ("chatglm2-6b", "load chatglm2-6b-int4", True),  # several runs: the pattern itself
        ("450.80.02", "driver 450.80.021", False),
        ("café", "the café opens", True),
    ],
)
def test_whole_word_matching(term: str, text: str, found: bool) -> None:
    latin = r"[^\W_\u4e00-\u9fff]"  # a letter or digit that is not Chinese
    pattern = rf"(?<!{latin}){re.escape(term)}(?:s|es)?(?!{latin})"
    singular = term.endswith("s") and len(term) > 3
    expected = bool(re.search(pattern, text)) or (
        singular and bool(re.search(pattern.replace(re.escape(term), re.escape(term[:-1])), text))
    )
    assert expected == found  # the plain regex the word-set lookup stands in for agrees
    assert lexical_score(term, hit(text, source="")) == (1.0 if found else 0.0)


def test_question_hedges_are_not_terms() -> None:
    # "至少", "多大", "大概": how a question asks, not what the document says.
    assert query_terms("至少要多大显存？") == {"显存": 1}
    assert query_terms("这个模型大概多少参数？") == {"模型": 1, "参数": 1}
    assert query_terms("Roughly how often is it downloaded?") == {"downloaded": 2}


@pytest.mark.parametrize(
    ("term", "text"),
    [
        ("C-Eval", "| Model | CEval (val) |"),
        ("QLoRA", "uses Q-LoRA adapters"),
        ("p-tuning", "PTuning"),
    ],
)
def test_latin_names_match_with_or_without_their_connectors(term: str, text: str) -> None:
    assert lexical_score(term, hit(text, source="")) == 1.0
    assert lexical_score(term, hit("CE val, Q LoRA, P tuning", source="")) == 0.0


def test_chinese_question_on_a_chunk_without_chinese_scores_its_latin_terms() -> None:
    question = "tiktoken 比其他开源分词器快多少倍？"
    english = hit("tiktoken is between 3-6x faster than a comparable open source tokeniser")
    assert lexical_score(question, english) == pytest.approx(CROSS_LANGUAGE_SHARE)
    assert lexical_score("Qwen 训练用了多少张 GPU？", english) == 0.0
    assert lexical_score("红烧肉怎么做？", english) == 0.0
    # A chunk with Chinese in it is scored on all the terms, as before.
    chinese = hit("tiktoken 是一个分词器。")
    assert lexical_score(question, chinese) == pytest.approx(3 / 6)


def test_each_missing_number_costs_a_share_of_the_relevance() -> None:
    question = "ChatGLM2-6B 在 RTX 4090 上每秒生成多少 token？"
    chunk = hit("ChatGLM2-6B 在 A100 上每秒生成 44 个 token。")
    lexical = lexical_score(question, chunk)
    rtx = frozenset({"rtx"})  # named by another chunk of the document (not an absent name)
    # Its identifiers (ChatGLM2-6B, RTX, 4090, token) are not all in one passage either.
    assert relevance(question, chunk, named_nearby=rtx) == pytest.approx(
        lexical * MISSING_NUMBER_FACTOR * SCATTERED_FACTOR
    )
    both = hit("ChatGLM2-6B 在 RTX 4090 上每秒生成 60 个 token。")
    assert relevance(question, both) == 1.0
    # A follow-up answers for its own numbers only: the earlier question's are not required.
    joined = "ChatGLM2-6B 在 FP16 下要多少显存？\n那 INT8 呢？"
    int8 = hit("INT8 量化需要 8 GB 显存。", heading="ChatGLM2-6B")
    assert relevance(joined, int8, focus="那 INT8 呢？") == lexical_score(
        joined, int8, "那 INT8 呢？"
    )
    int4 = hit("INT4 量化需要 6 GB 显存。", heading="ChatGLM2-6B")
    assert relevance(joined, int4, focus="那 INT8 呢？") == 0.0  # no term of the new question


def test_a_question_naming_a_document_by_its_path_needs_that_name_in_the_chunk() -> None:
    sources = ["zh/jieba/README.md", "en/qwen/README.md", "en/packages/faiss-cpu.md"]
    question = "Which GPU was used to benchmark jieba's segmentation speed?"
    assert named_documents(question, sources) == {"jieba"}
    assert named_documents("How fast is Faiss on a GPU?", sources) == {"faiss"}
    # Generic path parts and terms with a digit (required as numbers already) name nothing.
    assert named_documents("Where is the README of the docs?", ["docs/README.md"]) == set()
    assert named_documents("What is Qwen-7B?", ["qwen-7b/README.md"]) == set()
    other = hit("Benchmarks of segmentation speed on an A100 GPU.", score=0.6, source=sources[1])
    own = hit("Segmentation speed was benchmarked on a GPU.", score=0.6, source=sources[0])
    names = named_documents(question, sources)
    assert relevance(question, other, names=names) == pytest.approx(
        relevance(question, other) * MISSING_NUMBER_FACTOR
    )
    assert relevance(question, own, names=names) == relevance(question, own)


def test_an_option_is_a_term_matched_as_written() -> None:
    question = "用 usermod -G 给用户加附加组时，怎样不移除原来的组？"
    assert query_terms(question)["-g"] == 2
    assert query_terms("run it with --no-cache-dir")["--no-cache-dir"] == 2
    assert lexical_score("-G", hit("-G, --groups GROUP1[,GROUP2]")) == 1.0
    # Not another option that starts with its letter, nor the letter alone.
    assert lexical_score("-G", hit("-g, --gid GROUP")) == 1.0  # folded: -g and -G are one
    assert lexical_score("-G", hit("--gid GROUP, 5 g")) == 0.0


def test_a_chinese_question_scores_its_identifiers_on_a_half_translated_chunk() -> None:
    # A man page translated in part: the chunk answering holds the command and the option in
    # English text around a Chinese line. Its Chinese terms (paraphrased by the user) are
    # missing, its identifiers are all there: it scores as an English chunk would.
    question = "用 usermod -G 给用户加新的附加组时，怎样才能不把他从原来的组里移除？"
    chunk = hit(
        "-a, --append\nAdd the user to the supplementary group(s). Use only with the -G option."
        "\n将用户添加到附加组。",
        source="man/usermod.8.md",
    )
    english = hit(chunk.text.rsplit("\n", 1)[0], source="man/usermod.8.md")
    assert lexical_score(question, english) == pytest.approx(CROSS_LANGUAGE_SHARE)
    assert lexical_score(question, chunk) == pytest.approx(CROSS_LANGUAGE_SHARE)
    # One Latin term (the product's name) is not enough to score on it alone.
    one = "jieba 的新词发现对人名的召回率能达到多少？"
    assert lexical_score(one, hit("jieba 是一个分词工具。")) == pytest.approx(2 / 8)


def test_identifiers_held_apart_cost_a_share_of_the_relevance() -> None:
    # ChatGLM2-6B's README names ChatGLM2-6B-32K in its news and INT4 in its memory table.
    question = "ChatGLM2-6B-32K 在 INT4 量化下推理最低需要多少显存？"
    news = "更新：发布 ChatGLM2-6B-32K，支持 32K 上下文。"
    filler = "其它内容在这里。" * 3
    table = "量化等级: INT4; 最低 GPU 显存: 5.1 GB"
    apart = hit("\n".join([news, *[filler] * 6, table]))
    together = hit("\n".join([news, table]))
    assert scattered(question, apart) and not scattered(question, together)
    # Apart, the memory figure is also far from the model asked about (`value_passage`).
    assert value_passage(question, together) == 1.0
    assert relevance(question, apart) == pytest.approx(
        relevance(question, together) * SCATTERED_FACTOR * value_passage(question, apart)
    )
    # The chunk's path and heading belong to every passage; English questions are left out.
    headed = hit(table, heading="ChatGLM2-6B-32K")
    assert not scattered(question, headed)
    assert not scattered("How much memory does ChatGLM2-6B-32K need in INT4?", apart)


# tiktoken's README (installed package METADATA), as ingest writes it: the versions stand in
# the performance note, not beside o200k_base.
TIKTOKEN = (
    'import tiktoken\nenc = tiktoken.get_encoding("o200k_base")\n'
    'assert enc.decode(enc.encode("hello world")) == "hello world"\n\n'
    "The open source version of tiktoken can be installed from PyPI:\npip install tiktoken\n\n"
    "Performance\n\ntiktoken is between 3-6x faster than a comparable open source tokeniser.\n\n"
    "Performance measured on 1GB of text using the GPT-2 tokeniser, using GPT2TokenizerFast from "
    "tokenizers==0.13.2, transformers==4.24.0 and tiktoken==0.2.0."
)


def test_the_value_asked_must_stand_beside_what_is_asked_about() -> None:
    chunk = hit(TIKTOKEN, score=0.64, source="packages/tiktoken.md")
    asked = "In which tiktoken release was the o200k_base encoding introduced?"
    assert value_passage(asked, chunk) < 0.75  # versions, but in the performance note
    assert relevance(asked, chunk) < 0.45
    answered = "Which transformers release was used to measure tiktoken on 1GB of text?"
    assert value_passage(answered, chunk) == 1.0
    # A question asking for no kind of value is not concerned.
    assert value_passage("How do I install tiktoken?", chunk) == 1.0


def test_a_chunk_without_the_value_keeps_the_missing_kind_factor() -> None:
    question = "训练 ChatGLM-6B 一共花了多少 GPU 小时？"
    topical = hit("ChatGLM-6B 的训练在 GPU 上花了很多小时。")
    assert value_passage(question, topical) == MISSING_KIND_FACTOR


def test_a_hit_is_scored_with_its_neighbours() -> None:
    # Qwen's FAQ: the question's words in one chunk, the cache folder in the next.
    question = "Mac 上跑量化模型失败过，装完 OpenMP 以后要清理 Hugging Face 缓存里的哪个目录？"
    asking = hit("Q：Mac 上运行量化模型失败，报错 clang: error: unsupported option '-fopenmp'")
    answer = "A：安装 OpenMP 后，清理 Hugging Face 缓存 ~/.cache/huggingface/modules/ 再试。"
    alone = relevance(question, asking)
    assert alone < 0.45
    assert relevance(question, asking, after=answer) > alone
    assert relevance(question, asking, after=answer) >= 0.45
