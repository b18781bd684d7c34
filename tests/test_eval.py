"""`kbqa eval`: metrics, calibration stored per KB and used by `ask`, bad input, the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from langchain_core.messages import BaseMessage

from kbqa.chain import QAChain
from kbqa.evaluation.calibration import calibrate
from kbqa.evaluation.cases import EvalCase, parse_cases, source_matches
from kbqa.evaluation.metrics import summarise
from kbqa.evaluation.runner import EvalRecord, Retrieved, cited_sources
from kbqa.retrieval import Retriever
from tests.answering_support import DATA, settings_for, shared_home
from tests.cli_support import kbqa
from tests.fake_chat import FakeChat

# The bundled SmolLM2 answers in this process: why one thread, see tests/conftest.py.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTIONS = [
    {"id": "fp16", "question": "Lumen-7B 用 FP16 加载要多少显存？", "facts": ["14 GB"],
     "sources": ["lumen_deploy_zh.md"]},
    {"id": "int4", "question": "INT4 量化版本需要多少显存", "facts": ["5.5 GB"],
     "sources": ["lumen_deploy_zh.md"]},
    {"id": "keep", "question": "How long are Harbor snapshots kept?", "facts": ["14 days"],
     "sources": ["harbor_backup_en.md"]},
    {"id": "port", "question": "Which port exports the queue depth metric?", "facts": ["9464"]},
    {"id": "cook", "question": "红烧肉怎么做才好吃？", "unanswerable": True},
    {"id": "moon", "question": "How far is the Moon from the Earth?", "unanswerable": True},
]  # fmt: skip


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home of its own (calibration writes into the KB) holding a copy of the `ops` KB."""
    target = tmp_path_factory.mktemp("eval-home")
    shutil.copytree(shared_home() / "kbs" / "ops", target / "kbs" / "ops")
    cache = shared_home() / "cache"
    if cache.exists():
        (target / "cache").symlink_to(cache)
    return target


def write_questions(path: Path, items: list[object], extra_lines: list[str] = ()) -> Path:  # type: ignore[assignment]
    lines = [json.dumps(item, ensure_ascii=False) for item in items] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_retrieval_only_json_is_the_contract_shape(home: Path, tmp_path: Path) -> None:
    questions = write_questions(tmp_path / "q.jsonl", QUESTIONS)
    code, out, err = kbqa(home, "eval", str(questions), "--kb", "ops", "--retrieval-only", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["kb"] == "ops" and result["n"] == 6
    assert set(result["retrieval"]) == {"hit@1", "hit@3", "hit@5", "mrr"}
    assert result["retrieval"]["hit@5"] == 1.0 and result["retrieval"]["mrr"] > 0.5
    assert result["refusal"]["recall"] == 1.0 and result["refusal"]["precision"] == 1.0
    assert result["answer"] == {"fact_recall": None}
    assert result["citation"] == {"precision": None}
    assert result["latency_ms"]["p50"] > 0 and result["latency_ms"]["p95"] >= 0
    assert result["failed"] == []
    # fp16, int4 and cook are asked in Chinese; keep, port and moon in English.
    languages = result["by_language"]
    assert [(lang, part["n"]) for lang, part in languages.items()] == [("cjk", 3), ("other", 3)]
    for part in languages.values():
        assert part["retrieval"]["hit@5"] == 1.0 and part["refusal"]["recall"] == 1.0
        assert set(part) == {"n", "retrieval", "refusal", "answer", "citation", "evidence",
                             "latency_ms"}  # fmt: skip


def test_a_question_whose_source_is_not_retrieved_is_reported_failed(
    home: Path, tmp_path: Path
) -> None:
    wrong = {"id": "wrong", "question": "How long are Harbor snapshots kept?",
             "sources": ["no_such_file.md"]}  # fmt: skip
    questions = write_questions(tmp_path / "q.jsonl", [wrong])
    code, out, err = kbqa(home, "eval", str(questions), "--kb", "ops", "--retrieval-only", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["retrieval"]["hit@5"] == 0.0
    assert result["refusal"]["recall"] is None  # nothing unanswerable to score it by
    [failed] = result["failed"]
    assert failed["id"] == "wrong" and "expected source not in the top 5" in failed["problems"]
    assert failed["retrieved"][0]["source"] == "harbor_backup_en.md"


def test_full_run_scores_facts_and_citations(home: Path, tmp_path: Path) -> None:
    settings = settings_for(home, answer={"mode": "generate"})  # the model's own words
    retriever = Retriever(settings)

    def reply(messages: list[BaseMessage]) -> str:
        return "Snapshots are kept for 14 days [1]." if "Harbor" in str(messages) else "不知道 [1]"

    chat = FakeChat(reply=reply)
    from kbqa.evaluation.evaluate import evaluate

    cases, _ = parse_cases([json.dumps(q, ensure_ascii=False) for q in QUESTIONS])
    evaluation = evaluate(
        settings,
        cases,
        ["ops"],
        retriever=retriever,
        chain_factory=lambda r: QAChain(settings, chat, r, condense=False),
    )
    result = evaluation.to_json()
    # "keep" answered with its fact; fp16 / int4 / port answered without theirs.
    assert result["answer"]["fact_recall"] == pytest.approx(1 / 4)
    assert 0.0 <= result["citation"]["precision"] <= 1.0
    failed = {item["id"]: item for item in result["failed"]}
    assert "keep" not in failed
    assert failed["fp16"]["problems"] == ["answer lacks: 14 GB"]
    assert failed["fp16"]["answer"].startswith("不知道")


def test_calibrate_stores_the_kbs_threshold_and_ask_uses_it(home: Path, tmp_path: Path) -> None:
    questions = write_questions(tmp_path / "q.jsonl", QUESTIONS)
    code, out, err = kbqa(
        home, "eval", str(questions), "--kb", "ops", "--retrieval-only", "--calibrate", "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    threshold = result["calibrated_min_relevance"]
    assert 0.0 < threshold <= 1.0 and result["min_relevance"] == threshold
    assert result["calibration"]["at_threshold"]["answerable_kept"] == 1.0
    assert result["calibration"]["at_threshold"]["unanswerable_refused"] == 1.0
    assert len(result["calibration"]["curve"]) == 101

    code, out, err = kbqa(home, "kb", "list", "--json")
    [kb] = json.loads(out)["kbs"]
    assert kb["min_relevance"] == pytest.approx(threshold) and kb["calibrated"] is True

    # The stored threshold, not the global one, decides refusals: at 1.0 only a perfect match
    # passes, and a question with a word the documents lack ("tape") is refused.
    retriever = Retriever(settings_for(home))
    retriever.set_min_relevance("ops", 1.0)
    chain = QAChain(settings_for(home), FakeChat(fail=True), retriever)
    assert chain.ask("How long are Harbor snapshots kept on tape?", "ops").refused
    retriever.set_min_relevance("ops", None)
    code, out, err = kbqa(home, "kb", "list", "--json")
    [kb] = json.loads(out)["kbs"]
    assert kb["calibrated"] is False and kb["min_relevance"] == 0.45


def test_calibration_needs_both_kinds_of_question(home: Path, tmp_path: Path) -> None:
    questions = write_questions(tmp_path / "q.jsonl", QUESTIONS[:2])
    code, _, err = kbqa(home, "eval", str(questions), "--kb", "ops", "--retrieval-only",
                        "--calibrate")  # fmt: skip
    assert code == 2
    assert "calibration needs answerable and unanswerable questions" in err


def test_malformed_lines_are_reported_and_the_rest_evaluated(home: Path, tmp_path: Path) -> None:
    questions = write_questions(
        tmp_path / "q.jsonl",
        QUESTIONS[:1],
        ["{not json", '{"question": 3}', '["a list"]', '{"question": "x", "bogus": 1}'],
    )
    code, out, err = kbqa(home, "eval", str(questions), "--kb", "ops", "--retrieval-only", "--json")
    assert code == 1  # partial: some lines were skipped
    result = json.loads(out)
    assert result["n"] == 1
    assert [bad["line"] for bad in result["invalid_lines"]] == [2, 3, 4, 5]
    assert "line 2 skipped: not valid JSON" in err
    assert "unknown field 'bogus'" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "holds no questions"),
        (b"\n\n# only a comment\n", "holds no questions"),
        (b"{broken\n", "holds no questions (1 malformed lines, the first: line 1"),
        (b"\xff\xfe\x00binary", "is not UTF-8 text"),
    ],
)
def test_an_empty_or_unreadable_file_exits_2(
    home: Path, tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "q.jsonl"
    path.write_bytes(content)
    code, out, err = kbqa(home, "eval", str(path), "--kb", "ops", "--retrieval-only")
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err


def test_a_missing_file_or_unknown_kb_exits_2(home: Path, tmp_path: Path) -> None:
    code, _, err = kbqa(home, "eval", str(tmp_path / "absent.jsonl"), "--kb", "ops")
    assert code == 2 and "cannot read evaluation file" in err
    questions = write_questions(tmp_path / "q.jsonl", QUESTIONS[:1])
    code, _, err = kbqa(home, "eval", str(questions), "--kb", "nope", "--retrieval-only")
    assert code == 2 and "knowledge base nope does not exist" in err


def test_report_page_escapes_hostile_text(home: Path, tmp_path: Path) -> None:
    hostile = {"id": "<script>alert(1)</script>", "question": "<img src=x onerror=alert(1)>?",
               "sources": ["missing.md"]}  # fmt: skip
    questions = write_questions(tmp_path / "q.jsonl", [hostile, *QUESTIONS])
    report = tmp_path / "report"
    code, out, err = kbqa(
        home, "eval", str(questions), "--kb", "ops", "--retrieval-only", "--report", str(report)
    )
    assert code == 0, err
    page = (report / "index.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert (report / "relevance.png").stat().st_size > 1000
    assert "report:" in out and "1 questions failed" in out
    # The metrics per question language beside the totals, on the page and the terminal.
    assert "<th>all</th><th>cjk (3)</th><th>other (4)</th>" in page
    assert "cjk (3)" in out and "other (4)" in out


def test_source_matching_is_whole_path_components() -> None:
    assert source_matches("a.md", "a.md")
    assert source_matches("a.md", "docs/a.md")
    assert source_matches("docs/a.md", "team/docs/a.md")
    assert not source_matches("a.md", "docs/ba.md")
    assert not source_matches("docs/a.md", "a.md")


def test_facts_are_found_whatever_the_spacing_width_and_case() -> None:
    from kbqa.evaluation.metrics import contains_fact

    assert contains_fact("INT4 量化后需要约 6GB 显存", "6 GB")
    assert contains_fact("needs **13 gb** of memory", "13 GB")
    assert contains_fact("ＩＮＴ４ works", "int4")
    assert not contains_fact("needs 8 GB", "6 GB")


def test_citations_are_read_from_markers() -> None:
    sources = [{"index": 1, "source": "a.md"}, {"index": 2, "source": "b.md"}]
    assert cited_sources("x [2] y [1, 2] z [3]", sources) == ["b.md", "a.md"]
    assert cited_sources("参见[1]、[2]", sources) == ["a.md", "b.md"]
    assert cited_sources("no markers", sources) == []


def _record(relevance: float, unanswerable: bool, line: int) -> EvalRecord:
    case = EvalCase(line=line, question="q", unanswerable=unanswerable, facts=("f",))
    hit = Retrieved("a.md", "f", relevance, "kb")
    return EvalRecord(case, [hit], refused=False, latency_ms=float(line))


def test_calibration_keeps_answerable_questions_first() -> None:
    answerable = [0.9, 0.8, 0.7, 0.62, 0.6, 0.55, 0.5, 0.45, 0.44, 0.43, 0.42, 0.41, 0.40, 0.39,
                  0.38, 0.37, 0.36, 0.35, 0.34, 0.2]  # fmt: skip
    unanswerable = [0.1, 0.15, 0.3, 0.5]
    records = [_record(r, False, i) for i, r in enumerate(answerable)]
    records += [_record(r, True, 100 + i) for i, r in enumerate(unanswerable)]
    chosen = calibrate(records)
    # Keeping 95 % of 20 answerable questions allows losing one: the 0.2. Every unanswerable
    # question up to 0.3 is then refused; the one at 0.5 cannot be without losing more.
    assert 0.3 < chosen.threshold < 0.34
    assert chosen.point.answerable_kept == 0.95
    assert chosen.point.unanswerable_refused == 0.75


def test_metrics_are_null_without_anything_to_score() -> None:
    records = [_record(0.5, False, 1)]
    summary = summarise(records, retrieval_only=True)
    assert summary["refusal"]["recall"] is None and summary["refusal"]["precision"] is None
    assert summary["answer"]["fact_recall"] is None
    assert summary["latency_ms"] == {"p50": 1.0, "p95": 1.0}


def test_refusal_is_scored_per_question_language() -> None:
    from kbqa.evaluation.metrics import by_language, metric_table

    def record(question: str, unanswerable: bool, refused: bool) -> EvalRecord:
        case = EvalCase(line=1, question=question, unanswerable=unanswerable, facts=("f",))
        return EvalRecord(case, [Retrieved("a.md", "f", 0.5, "kb")], refused, latency_ms=1.0)

    records = [
        record("显存要多少？", unanswerable=True, refused=True),
        record("哪个端口？", unanswerable=True, refused=True),
        record("Which port?", unanswerable=True, refused=False),
        record("How much memory?", unanswerable=True, refused=True),
        record("How long?", unanswerable=False, refused=True),
    ]
    languages = by_language(records, retrieval_only=True)
    assert languages["cjk"]["n"] == 2 and languages["other"]["n"] == 3
    assert languages["cjk"]["refusal"] == {
        "precision": 1.0, "recall": 1.0, "answerable_refused": None}  # fmt: skip
    assert languages["other"]["refusal"] == {
        "precision": 0.5, "recall": 0.5, "answerable_refused": 1.0}  # fmt: skip

    result = {**summarise(records, retrieval_only=True), "by_language": languages}
    headings, rows = metric_table(result)
    assert headings == ["all", "cjk (2)", "other (3)"]
    assert ("refusal", "recall", ["0.750", "1.000", "0.500"]) in rows
    # One language: no columns that repeat the totals.
    alone = {**summarise(records[:2], retrieval_only=True)}
    alone["by_language"] = by_language(records[:2], retrieval_only=True)
    assert metric_table(alone)[0] == ["all"]


def test_latency_percentiles_interpolate() -> None:
    records = [_record(0.5, False, i) for i in range(1, 101)]
    summary = summarise(records, retrieval_only=True)
    assert summary["latency_ms"] == {"p50": 50.5, "p95": 95.0}


def test_data_folder_is_the_one_the_kbs_hold() -> None:
    # The questions above are about these files; guard against the fixture data moving.
    assert (DATA / "ops" / "lumen_deploy_zh.md").is_file()


def test_progress_shows_questions_done_and_the_time_left() -> None:
    import io

    from rich.console import Console

    from kbqa.cli.eval import EvalProgress

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with EvalProgress(console, enabled=True) as progress:
        progress(3, 10)
    drawn = out.getvalue()  # the last frame, drawn as the bar stops
    assert "3/10" in drawn and "ETA" in drawn
    assert "-:--:--" in drawn  # the estimate column, blank: one update gives rich no speed yet
