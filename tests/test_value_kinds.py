"""The kind of value a question asks for (kbqa.value_kinds) and what a missing one costs."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbqa.ingest.pipeline import ingest_paths
from kbqa.relevance import MISSING_KIND_FACTOR, lexical_score, relevance, relevance_of
from kbqa.retrieval import Retriever
from kbqa.settings import load_settings
from kbqa.storage.types import SearchHit
from kbqa.value_kinds import asked_kinds, missing_kinds


def kinds(question: str) -> list[str]:
    return [kind.name for kind in asked_kinds(question)]


def hit(text: str, source: str = "readme.md") -> SearchHit:
    return SearchHit("c1", "d1", text, source, None, None, 0.0)


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("训练 ChatGLM-6B 一共花了多少 GPU 小时？", ["duration"]),
        ("用 ADGEN 数据集训练要几个小时？", ["duration"]),
        ("How many GPU hours did the pre-training take?", ["duration"]),
        ("What is the default timeout in seconds?", ["duration"]),
        ("每千个 token 收费多少钱？", ["money"]),
        ("How many dollars did it cost to train?", ["money"]),
        ("每秒能生成多少个 token？", ["rate"]),
        ("How many requests per second does it serve?", ["rate"]),
        ("INT4 量化后要多少显存？", ["memory"]),
        ("What is the largest file size it can merge?", ["memory"]),
        ("推理速度比第一代快了百分之多少？", ["percentage", "ratio"]),
        ("多进程分词是单进程的几倍？", ["ratio"]),
        ("How much faster is it than Annoy?", ["ratio"]),
        ("是在什么型号的显卡上测出来的？", ["hardware"]),
        ("Which GPU was used for the benchmark?", ["hardware"]),
        ("INT8 版本是哪天发布的？", ["date"]),
        ("When was the specification last revised?", ["date"]),
        ("建议搭配哪个版本的 transformers？", ["version"]),
        ("新词发现对人名的召回率能达到多少？", ["percentage"]),
        ("Which smartphone chip did they run it on?", ["processor"]),
        ("官方测试用的是什么型号的处理器？", ["processor"]),
        ("Who is the original author of the shadow suite?", ["person"]),
        ("这个工具的作者是谁？", ["person"]),
        # Asking for no particular kind of value.
        ("北京今天的天气怎么样？", []),
        ("How do I install it on a Mac?", []),
        ("jieba 和 HanLP 相比，哪个准确率更高？", []),  # a comparison, not a figure
        ("Which key identifies who sent each message?", []),
        ("没有显卡，只用处理器能跑吗？", []),
        ("结巴分词支持哪些切分方式？", []),
        ("ChatGLM-6B 的参数规模有多大？", []),
    ],
)
def test_the_kind_a_question_asks_for(question: str, expected: list[str]) -> None:
    assert kinds(question) == expected


@pytest.mark.parametrize(
    ("question", "holds", "lacks"),
    [
        ("训练要多少小时？", "在 8 张 A100 上训练了 36 小时。", "训练使用了 8 张 A100。"),
        ("年假有多少天？", "年假为十天。", "年假需提前申请。"),
        ("What is the timeout in seconds?", "The timeout is 5s by default.", "Timeouts are set."),
        ("每千个 token 收费多少钱？", "每千 token 0.02 元。", "按 token 计费。"),
        ("How much did it cost?", "It cost $4,000 to train.", "It was costly."),
        ("每秒能生成多少 token？", "| 模型 | 速度 (tokens/s) |\n| 7B | 50.09 |", "生成很快。"),
        ("要多少显存？", "需要 6.7G 显存。", "显存占用较低。"),
        ("准确率是百分之多少？", "准确率为 42%。", "准确率很高。"),
        ("是单进程的几倍？", "约为单进程的 3.3 倍。", "多进程更快。"),
        ("Which GPU was it measured on?", "Measured on an A100-SXM4-80G.", "Measured on a GPU."),
        ("哪天发布的？", "**[2023/04/16]** 发布 INT8 版本。", "已发布 INT8 版本。"),
        ("哪个版本的 transformers？", "建议使用 4.30.2 版本。", "建议使用新版本。"),
        ("召回率能达到多少？", "Pass@1 一次通过率达到 35.9\\%。", "提高召回率。"),
        (
            "MMLU 准确率是多少？",
            "| INT4 | Accuracy (MMLU) |\n| INT4 | 45.47 |",
            "版本 0.39 提高了准确率。",
        ),
        (
            "What processor was it timed on?",
            "在 4 核 3.4GHz Linux 机器上测试。",
            "Timed on an A100.",
        ),
        ("Which chip runs it on a phone?", "在骁龙 8 Gen 2 手机上运行。", "It runs on a phone."),
        ("Who wrote it?", "Colin Watson (cjwatson@debian.org).", "It is maintained."),
        ("作者是谁？", "由清华大学 KEG 实验室开发。", "这是一个开源项目。"),
    ],
)
def test_a_passage_holds_the_kind_or_lacks_it(question: str, holds: str, lacks: str) -> None:
    assert missing_kinds(question, holds.lower()) == 0
    assert missing_kinds(question, lacks.lower()) == 1


def test_a_hash_or_identifier_is_not_a_number_with_a_unit() -> None:
    # "6436d" in a URL is not 6,436 days, "gpt2s" not 2 seconds.
    assert missing_kinds("训练要多少天？", "见 https://x.cn/d/6436d5a/ 的说明") == 1
    assert missing_kinds("What is the timeout in seconds?", "see gpt2s and v2s") == 1


def test_a_chunk_without_the_asked_kind_falls_below_the_default_threshold() -> None:
    question = "训练 ChatGLM-6B 一共花了多少 GPU 小时？"
    topical = hit("ChatGLM-6B 的训练在 GPU 上花了很多小时。")  # no number of hours
    assert lexical_score(question, topical) == 1.0  # every term of the question is there
    assert relevance(question, topical) == pytest.approx(MISSING_KIND_FACTOR)
    assert relevance(question, topical) < 0.45  # retrieval.min_relevance's default
    answering = hit("ChatGLM-6B 的训练在 GPU 上共用了 10 万小时。")
    assert relevance(question, answering) == 1.0


def test_only_the_new_question_of_a_follow_up_asks() -> None:
    joined = "ChatGLM-6B 训练了多少小时？\n那它支持哪些语言？"
    chunk = hit("ChatGLM-6B 支持中文和英文两种语言。")
    focus = "那它支持哪些语言？"
    assert relevance(joined, chunk, focus=focus) == lexical_score(joined, chunk, focus)


def test_a_value_in_the_next_chunk_of_the_same_document_counts() -> None:
    # The matching words in one chunk, the table with the value in the next one.
    question = "ChatGLM2-6B 平均每秒能输出多少个字符？"
    intro = hit("ChatGLM2-6B 提高了生成速度，生成 2000 个字符的平均速度对比如下：")
    table = "| 模型 | 推理速度 (字符/秒) |\n|---|---|\n| ChatGLM2-6B | 44.62 |"
    assert relevance(question, intro) == pytest.approx(
        lexical_score(question, intro) * MISSING_KIND_FACTOR
    )
    assert relevance(question, intro, after=table) >= lexical_score(question, intro)
    # A neighbour only helps: the chunk before, unrelated, changes nothing.
    assert relevance(question, intro, before="安装依赖。") == relevance(question, intro)


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("用户名最长可以有多少个字符？", ["number"]),  # a count with no unit of another kind
        ("用 ADGEN 训练要几个小时？", ["duration"]),  # 几个 with a unit: that kind only
        ("How many worker processes does it start by default?", ["number"]),
        ("In which tiktoken release was the o200k_base encoding introduced?", ["version"]),
        ("What is the minimum Python version required to install Typer?", ["version"]),
        ("一般系统里 cron 多久会自动跑一次 mandb？", ["duration"]),
        ("What is the default timeout of a request?", ["duration"]),
        ("官方的 Docker 镜像下载下来有多大？", ["memory"]),
        ("ChatGLM-6B 的参数规模有多大？", []),  # a model's size is not a file's
    ],
)
def test_counts_versions_timeouts_and_sizes_are_asked(question: str, expected: list[str]) -> None:
    assert kinds(question) == expected


def test_schedules_and_table_scores_hold_their_kinds() -> None:
    assert missing_kinds("cron 多久跑一次 mandb？", "mandb 通常由 cron 每天运行一次。") == 0
    assert missing_kinds("How long between runs?", "It is run daily by cron.") == 0
    # ingest writes a table row as "header: value; header: value"
    row = "量化等级: int4; accuracy (mmlu): 43.13; accuracy (c-eval dev): 50.30"
    assert missing_kinds("INT4 量化后 MMLU 准确率降到了多少？", row) == 0


def test_retrieval_finds_the_kind_in_a_neighbouring_chunk(tmp_path: Path) -> None:
    home = tmp_path / "home"
    docs = tmp_path / "docs"
    docs.mkdir()
    table = "\n".join(f"| 模型-{i} | {30 + i}.5 |" for i in range(40))
    (docs / "speed.md").write_text(
        "# 速度\n\nChatGLM2-6B 提高了生成速度，生成 2000 个字符的平均速度对比如下：\n\n"
        f"| 模型 | 推理速度 (字符/秒) |\n|---|---|\n{table}\n",
        encoding="utf-8",
    )
    settings = load_settings(home=home)
    assert not ingest_paths(settings, "speed", [docs]).failed
    hits = Retriever(settings).search("ChatGLM2-6B 平均每秒能输出多少个字符？", ["speed"], 5)
    assert len({hit.chunk_id for hit in hits}) > 1  # the text and the table are two chunks
    assert relevance_of(hits[0]) >= 0.45
