"""`kbqa eval --report DIR`: an HTML page with the numbers, plots and every failed question.

The page is self-contained (plots are PNG files beside it, no script), and every piece of text
from documents or questions is escaped, so a hostile document cannot inject markup.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from kbqa.evaluation.evaluate import Evaluation
from kbqa.evaluation.metrics import metric_table

PAGE = "index.html"
_STYLE = """
body { font-family: system-ui, "Noto Sans CJK SC", "WenQuanYi Micro Hei", sans-serif;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.failed { border: 1px solid #e0b4b4; background: #fff6f6; padding: 0.6em 1em; margin: 1em 0; }
.hit { font-size: 0.9em; color: #444; white-space: pre-wrap; }
img { max-width: 100%; }
"""


def write_report(evaluation: Evaluation, directory: Path) -> Path:
    """Write the page and its plots into `directory` (created if needed); returns the page."""
    directory.mkdir(parents=True, exist_ok=True)
    plots = _plots(evaluation, directory)
    result = evaluation.to_json()
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>kbqa eval: {_e(_kb_label(result))}</title><style>{_STYLE}</style></head><body>",
        f"<h1>kbqa eval — {_e(_kb_label(result))}</h1>",
        f"<p>{result['n']} questions; refusal threshold (min_relevance) "
        f"{result['min_relevance']}{'; retrieval only' if result['retrieval_only'] else ''}.</p>",
        _metrics_table(result),
        *(f"<h2>{_e(title)}</h2><img src='{_e(name)}' alt='{_e(title)}'>" for title, name in plots),
        _invalid_lines(result),
        _failures(result),
        "</body></html>",
    ]
    page = directory / PAGE
    page.write_text("\n".join(parts), encoding="utf-8")
    return page


def _kb_label(result: dict[str, Any]) -> str:
    kb = result["kb"]
    return kb if isinstance(kb, str) else ", ".join(kb)


def _metrics_table(result: dict[str, Any]) -> str:
    headings, table = metric_table(result)
    rows = [
        f"<tr><td>{_e(group)}</td><td>{_e(name)}</td>"
        + "".join(f"<td>{_e(value)}</td>" for value in shown)
        + "</tr>"
        for group, name, shown in table
    ]
    if "calibrated_min_relevance" in result:
        value = result["calibrated_min_relevance"]
        padding = "<td></td>" * (len(headings) - 1)
        rows.append(f"<tr><td>calibration</td><td>min_relevance</td><td>{value}</td>{padding}</tr>")
    head = "<tr><th>group</th><th>metric</th>" + "".join(f"<th>{_e(h)}</th>" for h in headings)
    head += "</tr>"
    return f"<h2>Metrics</h2><table>{head}{''.join(rows)}</table>"


def _invalid_lines(result: dict[str, Any]) -> str:
    if not result["invalid_lines"]:
        return ""
    items = "".join(
        f"<li>line {bad['line']}: {_e(bad['error'])}</li>" for bad in result["invalid_lines"]
    )
    return f"<h2>Lines skipped</h2><ul>{items}</ul>"


def _failures(result: dict[str, Any]) -> str:
    failed = result["failed"]
    if not failed:
        return "<h2>Failed questions</h2><p>None.</p>"
    blocks = [f"<h2>Failed questions ({len(failed)})</h2>"]
    for item in failed:
        hits = "".join(
            f"<li><b>{_e(hit['source'])}</b> ({hit['score']:.3f})"
            f"<div class='hit'>{_e(hit['text'])}</div></li>"
            for hit in item["retrieved"]
        )
        answer = (
            f"<p><b>Answer:</b> {_e(item['answer'])}</p>" if item.get("answer") is not None else ""
        )
        blocks.append(
            "<div class='failed'>"
            f"<p><b>{_e(item['id'] or 'line ' + str(item['line']))}</b>: {_e(item['question'])}</p>"
            f"<p>{_e('; '.join(item['problems']))} (top relevance {item['top_relevance']})</p>"
            f"{answer}<ol>{hits or '<li>nothing retrieved</li>'}</ol></div>"
        )
    return "".join(blocks)


def _plots(evaluation: Evaluation, directory: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[tuple[str, str]] = []
    answerable = [r.top_relevance for r in evaluation.records if not r.case.unanswerable]
    unanswerable = [r.top_relevance for r in evaluation.records if r.case.unanswerable]

    figure, axes = plt.subplots(figsize=(7, 3.5))
    bins = [i / 20 for i in range(21)]
    axes.hist([answerable, unanswerable], bins=bins, label=["answerable", "unanswerable"])
    axes.axvline(evaluation.min_relevance, color="k", linestyle="--", label="min_relevance")
    axes.set_xlabel("top relevance of the question's hits")
    axes.set_ylabel("questions")
    axes.legend()
    figure.tight_layout()
    figure.savefig(directory / "relevance.png", dpi=100)
    plt.close(figure)
    made.append(("Top relevance by kind of question", "relevance.png"))

    if evaluation.calibration is not None:
        curve = evaluation.calibration.curve
        figure, axes = plt.subplots(figsize=(7, 3.5))
        thresholds = [p.threshold for p in curve]
        axes.plot(thresholds, [p.answerable_kept for p in curve], label="answerable kept")
        axes.plot(thresholds, [p.unanswerable_refused for p in curve], label="unanswerable refused")
        axes.axvline(evaluation.calibration.threshold, color="k", linestyle="--", label="chosen")
        axes.set_xlabel("min_relevance")
        axes.set_ylabel("share of questions")
        axes.set_ylim(-0.02, 1.02)
        axes.legend()
        figure.tight_layout()
        figure.savefig(directory / "calibration.png", dpi=100)
        plt.close(figure)
        made.append(("Calibration curve", "calibration.png"))

    latencies = [r.latency_ms for r in evaluation.records]
    figure, axes = plt.subplots(figsize=(7, 3))
    axes.hist(latencies, bins=20)
    axes.set_xlabel("latency per question (ms)")
    axes.set_ylabel("questions")
    figure.tight_layout()
    figure.savefig(directory / "latency.png", dpi=100)
    plt.close(figure)
    made.append(("Latency", "latency.png"))
    return made


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)
