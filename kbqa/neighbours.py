"""The chunks next to a source in its document, for quoting.

A document often splits one answer over two chunks: "生成 2000 个字符的平均速度对比如下" closes
one chunk and the table of 字符/秒 opens the next; a table's note matches the question while
its rows sit in the chunk before. Retrieval finds the chunk whose words match the question;
the figure asked for is then a neighbour away. Quoting (kbqa.answer_mode.extract) scores the
neighbours' sentences too, and a neighbour that is quoted joins the sources it is cited from.

The KB is read through its public API (`KnowledgeBase.around`: a chunk and its neighbours in
reading order), on the handle the retriever keeps open; a KB or document gone meanwhile simply
has no neighbours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise

from kbqa.answer import Source
from kbqa.errors import ConfigError, NotFound
from kbqa.storage.errors import StorageError
from kbqa.storage.kb import KnowledgeBase
from kbqa.storage.types import ChunkRecord

OpenKB = Callable[[str], KnowledgeBase]
"""A KB by name, already open and kept open by its owner (kbqa.retrieval.Retriever.kb)."""

AROUND = 3
"""Neighbours are read for this many of the best sources (the first ones given)."""


@dataclass(frozen=True)
class Nearby:
    """Chunks next to the sources, and what a reader saw just before some chunks."""

    sources: list[Source] = field(default_factory=list)
    """They carry the score and KB of the source they neighbour, and index 0 (numbered when
    quoted)."""
    leads: dict[str, str] = field(default_factory=dict)
    """By chunk id: the text of the chunk before it in its document (where the caption of a
    table that opens the chunk ends it, "生成 2000 个字符的平均速度对比如下", or where an HTML
    table's header row is)."""


def with_further(nearby: Nearby, further: Sequence[Source]) -> Nearby:
    """`nearby` with `further` candidates added (hits that retrieval ranked below the sources
    given to the model), those not already among them, each once."""
    known = {s.chunk_id for s in nearby.sources}
    extra = [s for s in further if s.chunk_id not in known]
    return replace(nearby, sources=[*nearby.sources, *extra])


def adjacent_chunks(open_kb: OpenKB, sources: Sequence[Source], around: int = AROUND) -> Nearby:
    """The chunks just before and just after each of the first `around` sources in its
    document, not already among `sources`, each once. `open_kb`: the KBs, open (this closes
    none of them)."""
    known = {s.chunk_id for s in sources}
    nearby = Nearby()
    for source in sources[:around]:
        try:
            found = open_kb(source.kb).around(source.doc_id, {source.chunk_id})
        except (NotFound, ConfigError, StorageError):
            continue  # deleted or damaged since it was searched: quote from what was found
        if source.chunk_id not in found:
            continue
        place = found[source.chunk_id]
        chunks = [c for c in (place.before, place.chunk, place.after) if c is not None]
        for before, chunk in pairwise(chunks):
            if chunk.chunk_id is not None:
                nearby.leads.setdefault(chunk.chunk_id, before.text)
        for chunk in chunks:
            if chunk.chunk_id is not None and chunk.chunk_id not in known:
                known.add(chunk.chunk_id)
                nearby.sources.append(_as_source(source, chunk))
    return nearby


def _as_source(anchor: Source, chunk: ChunkRecord) -> Source:
    return replace(
        anchor,
        index=0,
        chunk_id=chunk.chunk_id or "",
        page=chunk.page,
        heading=chunk.heading,
        text=chunk.text,
        evidence=None,
    )
