"""Crash safety with real SIGKILLs, and searches while another process writes."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from storage_helpers import unit_vectors
from sync_worker import BIG_DIM, big_sync_arguments, initial_documents

from kbqa.storage.kb import KnowledgeBase
from kbqa.storage.places import database_of, kbs_dir_with_database

WORKER = Path(__file__).with_name("sync_worker.py")
REPO = Path(__file__).resolve().parents[2]

State = frozenset[tuple[str, str, int]]
Copier = Callable[[Path, Path], Path]


def _spawn(kbs_dir: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(WORKER.parent)])}
    database = database_of(kbs_dir)
    if database:
        env["KBQA_TEST_DATABASE"] = database
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(kbs_dir), *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _state(kb: KnowledgeBase) -> State:
    return frozenset((d.path, d.content_hash, d.chunks) for d in kb.documents())


def _expected_after(before: State) -> State:
    upserts, removals = big_sync_arguments()
    replaced = {u.path for u in upserts} | set(removals)
    kept = {entry for entry in before if entry[0] not in replaced}
    return frozenset(kept | {(u.path, u.content_hash, len(u.chunks)) for u in upserts})


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    kbs_dir = tmp_path_factory.mktemp("template")
    with KnowledgeBase.create(kbs_dir, "kb", embedding="fake", dim=BIG_DIM) as kb:
        kb.sync(initial_documents(), [])
    return kbs_dir


@pytest.fixture
def fresh_copy(database: str, request: pytest.FixtureRequest) -> Copier:
    """Makes a KB `kb` like the template's: a copy of its folder, or (PostgreSQL) the same
    documents in a new database, which this host reaches through folder `dest`."""

    def copy(template: Path, dest: Path) -> Path:
        if database == "sqlite":
            shutil.copytree(template, dest)
            return dest
        server = request.getfixturevalue("postgres_server")
        kbs_dir = kbs_dir_with_database(dest, server.create_database())
        with KnowledgeBase.create(kbs_dir, "kb", embedding="fake", dim=BIG_DIM) as kb:
            kb.sync(initial_documents(), [])
        return kbs_dir

    return copy


def _assert_whole(kbs_dir: Path, before: State, after: State) -> State:
    """Open the KB after a crash: healthy, searchable, and exactly before or after."""
    with KnowledgeBase.open(kbs_dir, "kb") as kb:
        assert kb.check() == []
        state = _state(kb)
        assert state in (before, after)
        total = sum(chunks for _, _, chunks in state)
        hits = kb.search(unit_vectors(np.random.default_rng(0), 1, BIG_DIM)[0], "驱动 old", 10)
        assert len(hits) == min(10, total)
        assert kb.check() == []  # still healthy after the index was rebuilt and written
    return state


def test_sigkill_at_random_moments_leaves_before_or_after(
    template: Path, tmp_path: Path, fresh_copy: Copier
) -> None:
    with KnowledgeBase.open(template, "kb") as kb:
        before = _state(kb)
    after = _expected_after(before)

    # One undisturbed run measures how long the sync takes.
    full = fresh_copy(template, tmp_path / "full")
    worker = _spawn(full, "kb", "big")
    assert worker.stdout is not None and worker.stdout.readline().strip() == "start"
    started = time.monotonic()
    assert worker.stdout.readline().strip() == "done"
    duration = time.monotonic() - started
    worker.wait()
    assert _assert_whole(full, before, after) == after

    moments = random.Random(42)
    for attempt in range(6):
        kbs_dir = fresh_copy(template, tmp_path / f"kill{attempt}")
        worker = _spawn(kbs_dir, "kb", "big")
        assert worker.stdout is not None and worker.stdout.readline().strip() == "start"
        # Spread the kills over the whole sync, a few just before it would have finished.
        time.sleep(moments.uniform(0.0, 1.2 * duration))
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        _assert_whole(kbs_dir, before, after)


@pytest.mark.parametrize("where", ["--die-mid-transaction", "--die-after-commit"])
def test_death_at_the_critical_points(
    template: Path, tmp_path: Path, where: str, fresh_copy: Copier
) -> None:
    with KnowledgeBase.open(template, "kb") as kb:
        before = _state(kb)
    after = _expected_after(before)
    kbs_dir = fresh_copy(template, tmp_path / "kb")
    worker = _spawn(kbs_dir, "kb", "big", where)
    assert worker.wait() == 9
    state = _assert_whole(kbs_dir, before, after)
    assert state == (after if where == "--die-after-commit" else before)
    if where == "--die-after-commit" and database_of(kbs_dir) is None:
        # The commit stands though its index file was never written; open rebuilt it. (A
        # PostgreSQL host caught up from generation 1's file instead, writing none.)
        with KnowledgeBase.open(kbs_dir, "kb") as kb:
            assert (kb.path / "index.2.faiss").exists()


def test_search_while_another_process_writes(
    template: Path, tmp_path: Path, fresh_copy: Copier
) -> None:
    kbs_dir = fresh_copy(template, tmp_path / "kb")
    with KnowledgeBase.open(kbs_dir, "kb") as reader:
        query = unit_vectors(np.random.default_rng(3), 1, BIG_DIM)[0]
        writer = _spawn(kbs_dir, "kb", "generations", "25")
        searches = 0
        tags_seen = set()
        while writer.poll() is None or searches == 0:
            hits = reader.search(query, "doc1 part3", 30)
            # Each search sees one committed generation: every hit carries the same tag.
            tags = {hit.text.split()[0] for hit in hits}
            assert len(hits) == 20 if tags == {"old"} else len(hits) == 30
            assert len(tags) == 1
            tags_seen |= tags
            searches += 1
        assert writer.returncode == 0
        final = reader.search(query, "", 200)
        assert {hit.text.split()[0] for hit in final} == {"gen24"} and len(final) == 100
        assert reader.check() == []
    assert searches > 5 and len(tags_seen) > 1
