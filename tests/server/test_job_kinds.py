"""Job kinds in jobs.db (upload, watch), the listing behind `GET /v1/jobs`, and the
`server.watch` setting."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kbqa.server.job_store import Job, JobStore
from kbqa.settings import SettingsError, load_settings

_VERSION_1 = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, kb TEXT NOT NULL, owner TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    files TEXT NOT NULL, paths TEXT NOT NULL, progress TEXT NOT NULL, result TEXT,
    error TEXT, error_code TEXT, created REAL NOT NULL, started REAL, finished REAL
);
CREATE INDEX jobs_by_state ON jobs (state, finished);
PRAGMA user_version = 1;
"""


def test_a_version_1_database_keeps_its_jobs_as_uploads(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(_VERSION_1)
        conn.execute(
            "INSERT INTO jobs VALUES ('old', 'kb', 'gone', 'done', '[\"a.md\"]', '[]', "
            '\'{"files_total": 1, "files_done": 1, "chunks": 2}\', NULL, NULL, NULL, '
            "1.0, 1.0, 2.0)"
        )
    conn.close()
    store = JobStore(path)
    try:
        old = store.get("old")
        assert old is not None and old.kind == "upload" and old.files == ["a.md"]
        store.save(Job(id="new", kb="kb", files=["/srv/docs"], kind="watch", created=3.0))
        assert [j.id for j in store.newest(kind="watch", kbs=None, limit=10)] == ["new"]
        assert [j.id for j in store.newest(kind=None, kbs=None, limit=10)] == ["new", "old"]
        assert store.newest(kind=None, kbs=[], limit=10) == []
        assert [j.id for j in store.newest(kind=None, kbs=["kb"], limit=1)] == ["new"]
    finally:
        store.close()
    assert not list(tmp_path.glob("jobs.db.corrupt-*")), "migrated, not moved aside"


def test_watch_entries_from_the_file_and_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.toml").write_text(
        '[[server.watch]]\npath = "~/manuals"\nkb = "ops"\n\n[[server.watch]]\npath = "notes"\n',
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    watch = load_settings(tmp_path).server.watch
    assert [(w.path, w.kb) for w in watch] == [
        (Path("~/manuals").expanduser(), "ops"),
        (tmp_path / "notes", "default"),
    ]
    monkeypatch.setenv("KBQA_SERVER__WATCH", '[{"path": "/srv/docs", "kb": "手册"}]')
    (entry,) = load_settings(tmp_path).server.watch
    assert (entry.path, entry.kb) == (Path("/srv/docs"), "手册")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/srv/docs", "expected a JSON list"),
        ('[{"path": "/srv/docs", "kb": "../x"}]', "server.watch.0.kb"),
        ('[{"kb": "ops"}]', "server.watch.0.path"),
        ('[{"path": "/srv/docs", "folder": "x"}]', "server.watch.0.folder"),
    ],
)
def test_bad_watch_entries_are_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("KBQA_SERVER__WATCH", value)
    with pytest.raises(SettingsError, match=message.replace(".", r"\.")):
        load_settings(tmp_path)
