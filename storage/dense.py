"""What a KB needs from its dense-vector backend (FAISS file cache or Milvus collection).

Either backend is derived from the vectors in the KB's database (kbqa.storage.store): `current`
hands out the index that matches a generation read inside the caller's transaction,
`committed` brings it forward
after a commit (the caller holds the KB write lock), `clear` forgets it when the KB closes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from kbqa.storage.types import Vectors

if TYPE_CHECKING:
    from kbqa.storage.store import Store

Ids = npt.NDArray[np.int64]


class DenseIndex(Protocol):
    @property
    def dim(self) -> int: ...

    def search(
        self,
        query: Vectors,
        n: int,
        allowed: Ids | None = None,
        sources: Sequence[str] | None = None,
    ) -> list[tuple[int, float]]:
        """Top `n` (chunk rowid, inner product) for a unit query [dim], best first.

        `sources` (relative sources or absolute paths) restricts the search before the cut;
        `allowed` holds the rowids the caller resolved them to in its snapshot. An index
        filters by whichever it can evaluate itself.
        """
        ...


class DenseCache(Protocol):
    def clear(self) -> None: ...

    def current(self, store: Store, generation: int) -> DenseIndex: ...

    def committed(
        self,
        store: Store,
        base: Any,  # what `current` returned before the commit; each backend knows its type
        generation: int,
        removed: list[int],
        added: list[int],
        vectors: list[Vectors],
    ) -> None: ...
