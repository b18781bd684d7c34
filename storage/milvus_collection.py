"""Operations on one KB's Milvus collection; callers wrap them in `milvus_errors`.

Rows: `id` (INT64 primary key = chunks.id), `vector` (FLOAT_VECTOR, unit length, inner
product = cosine), `doc_id`, `source`, `path` (VARCHAR) so that filters run in Milvus, and
`checksum` (the chunk row's digest in SQLite) so that reconciling compares content, not ids.
The collection property `kbqa.generation` records which SQLite generation the rows reflect.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from kbqa.storage.errors import KBDamaged
from kbqa.storage.rows import IN_JSON
from kbqa.storage.types import Vectors
from kbqa.storage.vector_index import HNSW_EF_CONSTRUCTION, HNSW_M, IndexKind

GENERATION_PROPERTY = "kbqa.generation"
VARCHAR_MAX = 65_535  # Milvus' largest VARCHAR, in bytes
BATCH = 2_000
_ROWS_SQL = (
    "SELECT c.id, c.vector, c.doc_id, coalesce(d.source, ''), coalesce(d.path, ''), c.checksum "
    f"FROM chunks c LEFT JOIN documents d ON d.doc_id = c.doc_id WHERE c.id {IN_JSON}"
)


class Collection:
    def __init__(self, client: Any, name: str, dim: int, kb_name: str) -> None:
        self.client = client
        self.name = name
        self.dim = dim
        self._kb_name = kb_name

    def exists(self) -> bool:
        return bool(self.client.has_collection(self.name))

    def stamp(self) -> int | None:
        """The generation the rows reflect; None if there is no collection, -1 if unknown."""
        if not self.exists():
            return None
        properties = self.client.describe_collection(self.name)["properties"]
        value = str(properties.get(GENERATION_PROPERTY, ""))
        return int(value) if value.isdigit() else -1

    def set_stamp(self, generation: int) -> None:
        self.client.alter_collection_properties(
            self.name, properties={GENERATION_PROPERTY: str(generation)}
        )

    def create(self, kind: IndexKind) -> None:
        from pymilvus import DataType

        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        for text_field in ("doc_id", "source", "path"):
            schema.add_field(text_field, DataType.VARCHAR, max_length=VARCHAR_MAX)
        schema.add_field("checksum", DataType.VARCHAR, max_length=64)
        # Strong: a search right after a write (by this or another process) sees the write.
        self.client.create_collection(self.name, schema=schema, consistency_level="Strong")
        # An empty collection's index is ready at once: skip pymilvus' half-second polling.
        self.client.create_index(self.name, self._index_params(kind), sync=False)
        self.client.load_collection(self.name)

    def load(self) -> None:
        """Load the collection for search unless it is (Milvus Lite forgets this on restart)."""
        state = self.client.get_load_state(self.name)["state"]
        if getattr(state, "name", str(state)) != "Loaded":
            self.client.load_collection(self.name)

    def drop(self) -> None:
        if self.exists():
            self.client.drop_collection(self.name)

    def reindex(self, kind: IndexKind) -> None:
        """Switch between exact and HNSW; searches wait or fail while the index rebuilds."""
        self.client.release_collection(self.name)
        self.client.drop_index(self.name, "vector")
        self.client.create_index(self.name, self._index_params(kind))
        self.client.load_collection(self.name)

    def kind(self) -> IndexKind:
        described = self.client.describe_index(self.name, "vector") or {}
        return "hnsw" if str(described.get("index_type", "")).upper() == "HNSW" else "flat"

    def stored_dim(self) -> int:
        for field in self.client.describe_collection(self.name)["fields"]:
            if field["name"] == "vector":
                return int(field["params"]["dim"])
        return -1

    def matches_schema(self) -> bool:
        """The collection has this KB's dimension and every field `create` gives it."""
        fields = {f["name"]: f for f in self.client.describe_collection(self.name)["fields"]}
        vector = fields.get("vector", {}).get("params", {})
        wanted = {"id", "vector", "doc_id", "source", "path", "checksum"}
        return wanted <= set(fields) and int(vector.get("dim", -1)) == self.dim

    def ids(self) -> Iterator[int]:
        yield from self.checksums()

    def checksums(self) -> dict[int, str]:
        """Every row's id and the checksum of the chunk it was copied from."""
        found: dict[int, str] = {}
        iterator = self.client.query_iterator(
            self.name, batch_size=BATCH, filter="id >= 0", output_fields=["id", "checksum"]
        )
        try:
            while batch := iterator.next():
                found.update((int(row["id"]), str(row["checksum"])) for row in batch)
        finally:
            iterator.close()
        return found

    def delete(self, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), BATCH):
            self.client.delete(self.name, ids=[int(i) for i in ids[start : start + BATCH]])

    def insert_from_db(self, conn: sqlite3.Connection, ids: Sequence[int]) -> None:
        """Copy chunk rows `ids` from SQLite (inside the caller's transaction) into Milvus."""
        for start in range(0, len(ids), BATCH):
            batch = json.dumps([int(i) for i in ids[start : start + BATCH]])
            rows = [
                {
                    "id": rowid,
                    "vector": self._vector(blob, rowid).tolist(),
                    "doc_id": doc_id,
                    "source": source,
                    "path": path,
                    "checksum": checksum,
                }
                for rowid, blob, doc_id, source, path, checksum in conn.execute(_ROWS_SQL, (batch,))
            ]
            if rows:
                self.client.insert(self.name, rows)

    def count_differing(self, conn: sqlite3.Connection, ids: Sequence[int]) -> int:
        """How many of `ids` (on both sides) hold another vector in Milvus than in SQLite."""
        differing = 0
        for start in range(0, len(ids), BATCH):
            batch = [int(i) for i in ids[start : start + BATCH]]
            found = self.client.query(
                self.name, filter=f"id in {json.dumps(batch)}", output_fields=["vector"]
            )
            in_milvus = {int(row["id"]): np.asarray(row["vector"], np.float32) for row in found}
            for rowid, blob, *_ in conn.execute(_ROWS_SQL, (json.dumps(batch),)):
                if len(blob) != 4 * self.dim:
                    continue  # reported by the SQLite checks
                stored = np.frombuffer(blob, dtype=np.float32)
                milvus = in_milvus.get(rowid)
                if milvus is None or not np.allclose(milvus, stored, atol=1e-5):
                    differing += 1
        return differing

    def _index_params(self, kind: IndexKind) -> Any:
        params = self.client.prepare_index_params()
        if kind == "hnsw":
            tuning = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
            params.add_index("vector", index_type="HNSW", metric_type="IP", params=tuning)
        else:
            params.add_index("vector", index_type="FLAT", metric_type="IP")
        return params

    def _vector(self, blob: bytes, rowid: int) -> Vectors:
        if len(blob) != 4 * self.dim:
            raise KBDamaged(
                f"knowledge base {self._kb_name}: chunk row {rowid} has a vector of the wrong "
                "size; run `kbqa kb check`"
            )
        return np.frombuffer(blob, dtype=np.float32)
