"""The `kbqa eval --report` page opens in a real Chromium with its plots and no errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kbqa.cli import app
from tests.answering_support import shared_home

pytestmark = pytest.mark.browser


def test_report_opens_with_plots_and_failed_questions(new_page: Any, tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(shared_home() / "kbs" / "ops", home / "kbs" / "ops")
    questions = tmp_path / "q.jsonl"
    lines = [
        {"question": "INT4 量化版本需要多少显存", "sources": ["lumen_deploy_zh.md"]},
        {"question": "How long are Harbor snapshots kept?", "sources": ["elsewhere.md"]},
        {"question": "红烧肉怎么做才好吃？", "unanswerable": True},
    ]
    questions.write_text("\n".join(json.dumps(q, ensure_ascii=False) for q in lines) + "\n")
    report = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        ["--home", str(home), "eval", str(questions), "--kb", "ops", "--retrieval-only",
         "--calibrate", "--report", str(report)],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr

    page = new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("requestfailed", lambda request: problems.append(request.url))
    page.goto((report / "index.html").as_uri())
    images = page.locator("img")
    assert images.count() == 3  # relevance, calibration curve, latency
    widths = images.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert all(width > 300 for width in widths), widths
    assert page.locator(".failed").count() == 1
    assert "elsewhere.md" not in page.locator(".failed").inner_text()
    assert "How long are Harbor snapshots kept?" in page.locator(".failed").inner_text()
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert problems == []
