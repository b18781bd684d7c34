"""KB names on the command line: canonical form, a letter or digit needed, look-alikes one KB."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from kbqa.cli import app

runner = CliRunner()


def test_a_name_without_letter_or_digit_is_refused_at_once(tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("The release is called Borealis.\n")
    result = runner.invoke(
        app, ["--home", str(tmp_path / "home"), "ingest", str(note), "--kb", "-"]
    )
    assert result.exit_code == 2
    assert "must contain a letter or a digit" in result.stderr
    listed = runner.invoke(app, ["--home", str(tmp_path / "home"), "kb", "list", "--json"])
    assert json.loads(listed.stdout) == {"kbs": []}


def test_fullwidth_and_ascii_spellings_name_one_kb(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    note = tmp_path / "note.txt"
    note.write_text("The release is called Borealis.\n")
    assert runner.invoke(app, ["--home", home, "ingest", str(note), "--kb", "ＡＢ"]).exit_code == 0
    again = runner.invoke(app, ["--home", home, "ingest", str(note), "--kb", "AB", "--json"])
    assert json.loads(again.stdout)["unchanged"] == 1
    listed = runner.invoke(app, ["--home", home, "kb", "list", "--json"])
    assert [kb["name"] for kb in json.loads(listed.stdout)["kbs"]] == ["AB"]
