"""Child process for the crash and concurrency tests (run as a script, never imported by pytest).

sync_worker.py KBS_DIR NAME big [--die-after-commit | --die-mid-transaction]
    one large deterministic sync; prints "start" just before it, "done" after
sync_worker.py KBS_DIR NAME generations N
    N consecutive syncs, each replacing every document with chunks tagged "gen<i>"

With KBQA_TEST_DATABASE set to a PostgreSQL URL, the KB is the one in that database.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from storage_helpers import make_doc, unit_vectors

from kbqa.storage import index_cache, rows
from kbqa.storage.kb import KnowledgeBase
from kbqa.storage.keyword import tokenize
from kbqa.storage.pg_store import PostgresStore
from kbqa.storage.places import kbs_dir_with_database
from kbqa.storage.types import DocumentUpsert

BIG_DIM = 32


def big_sync_arguments() -> tuple[list[DocumentUpsert], list[str]]:
    """Replace doc 0, remove doc 1, add 30 documents of 100 chunks (the initial KB has docs 0-3)."""
    rng = np.random.default_rng(99)
    upserts = [
        make_doc("/docs/0.txt", ["replaced 零"], unit_vectors(rng, 1, BIG_DIM), content_hash="new")
    ]
    for i in range(30):
        texts = [f"新文档 {i} 第 {j} 段 python3.{j} 驱动 450.{i}.{j}" for j in range(100)]
        upserts.append(
            make_doc(
                f"/docs/new{i}.txt", texts, unit_vectors(rng, 100, BIG_DIM), content_hash="new"
            )
        )
    return upserts, ["/docs/1.txt"]


def initial_documents() -> list[DocumentUpsert]:
    rng = np.random.default_rng(7)
    return [
        make_doc(
            f"/docs/{i}.txt", [f"old {i} {j}" for j in range(5)], unit_vectors(rng, 5, BIG_DIM)
        )
        for i in range(4)
    ]


def _die(*_: object, **__: object) -> None:
    os._exit(9)


def main() -> None:
    database = os.environ.get("KBQA_TEST_DATABASE")
    kbs_dir = kbs_dir_with_database(Path(sys.argv[1]), database)
    name, mode = sys.argv[2], sys.argv[3]
    kb = KnowledgeBase.open(kbs_dir, name)
    if mode == "big":
        upserts, removals = big_sync_arguments()
        if "--die-after-commit" in sys.argv:
            index_cache.write_index = _die  # type: ignore[assignment]
        if "--die-mid-transaction" in sys.argv:
            owner: object = PostgresStore if database else rows
            real_insert = owner.insert_document  # type: ignore[attr-defined]
            inserted = []

            def insert_then_die(*args: object) -> list[int]:
                inserted.append(1)
                if len(inserted) == 10:
                    os._exit(9)
                return real_insert(*args)  # type: ignore[arg-type]

            owner.insert_document = insert_then_die  # type: ignore[attr-defined]
        tokenize("预热")  # jieba's one-off start-up is not what the kills should land in
        print("start", flush=True)
        kb.sync(upserts, removals)
        print("done", flush=True)
    elif mode == "generations":
        rng = np.random.default_rng(5)
        for generation in range(int(sys.argv[4])):
            tag = f"gen{generation}"
            docs = [
                make_doc(
                    f"/docs/{d}.txt",
                    [f"{tag} doc{d} part{j}" for j in range(20)],
                    unit_vectors(rng, 20, BIG_DIM),
                    content_hash=tag,
                )
                for d in range(5)
            ]
            kb.sync(docs, [])
        print("done", flush=True)
    kb.close()


if __name__ == "__main__":
    main()
