"""The CLI with `storage.database`: shown without its password, refused when malformed, and
one clear line when the server cannot be reached."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kbqa.cli import app
from kbqa.storage import pg_pool

URL = "postgresql://kbqa:s3cret@127.0.0.1:9/kbqa"  # port 9: nothing listens there


@pytest.fixture(autouse=True)
def no_pool_left_behind() -> Iterator[None]:
    """The in-process CLI opens this process's pool for URL; left open, its threads would go on
    reconnecting to nothing (and logging it) through the rest of the session."""
    yield
    pg_pool.close(URL)


def test_config_show_hides_the_password(tmp_path: Path) -> None:
    env = {"KBQA_STORAGE__DATABASE": URL}
    shown = CliRunner().invoke(app, ["config", "show", "--json", "--home", str(tmp_path)], env=env)
    assert shown.exit_code == 0, shown.stderr
    assert json.loads(shown.stdout)["storage"]["database"] == URL.replace("s3cret", "***")
    toml = CliRunner().invoke(app, ["config", "show", "--home", str(tmp_path)], env=env)
    assert toml.exit_code == 0 and "s3cret" not in toml.stdout


def test_a_database_that_is_not_postgresql_is_a_usage_error(tmp_path: Path) -> None:
    env = {"KBQA_STORAGE__DATABASE": "mysql://kbqa@db/kbqa"}
    listed = CliRunner().invoke(app, ["kb", "list", "--home", str(tmp_path)], env=env)
    assert listed.exit_code == 2
    assert "storage.database" in listed.stderr and "postgresql://" in listed.stderr


def test_an_unreachable_database_is_one_line_without_the_password(tmp_path: Path) -> None:
    env = {"KBQA_STORAGE__DATABASE": URL}
    listed = CliRunner().invoke(app, ["kb", "list", "--home", str(tmp_path)], env=env)
    assert listed.exit_code == 1
    assert listed.stderr.count("\n") == 1 and "PostgreSQL at" in listed.stderr
    assert "s3cret" not in listed.stderr and "***" in listed.stderr


def test_questions_over_an_unreachable_database_say_so_and_exit_1(tmp_path: Path) -> None:
    # The documented exit status of a database that cannot be reached, on the read path too
    # (search and eval open the KB through the Retriever): not a configuration error (2).
    env = {"KBQA_STORAGE__DATABASE": URL}
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "how much memory?"}) + "\n", encoding="utf-8")
    for args in (["search", "how much memory?"], ["eval", str(questions), "--retrieval-only"]):
        found = CliRunner().invoke(app, [*args, "--home", str(tmp_path)], env=env)
        assert found.exit_code == 1, (args, found.stderr)
        assert "PostgreSQL at" in found.stderr and "s3cret" not in found.stderr
