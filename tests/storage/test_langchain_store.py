from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_tests.integration_tests import VectorStoreIntegrationTests
from storage_helpers import make_doc

from kbqa.storage.kb import KnowledgeBase
from kbqa.storage.langchain_store import KBVectorStore


class TestKBVectorStoreStandard(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, tmp_path: Path) -> Iterator[KBVectorStore]:  # type: ignore[override]
        embeddings = self.get_embeddings()
        dim = len(embeddings.embed_query("probe"))
        with KnowledgeBase.create(tmp_path, "lc", embedding="fake", dim=dim) as kb:
            yield KBVectorStore(kb, embeddings)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KBVectorStore]:
    with KnowledgeBase.create(tmp_path, "lc", embedding="fake", dim=32) as kb:
        yield KBVectorStore(kb, DeterministicFakeEmbedding(size=32))


def test_scores_are_relevances_in_order(store: KBVectorStore) -> None:
    store.add_texts(["alpha beta", "gamma delta", "epsilon"], ids=["a", "b", "c"])
    scored = store.similarity_search_with_score("alpha beta", k=3)
    assert scored[0][0].id == "a" and scored[0][1] == pytest.approx(1.0, abs=1e-5)
    assert all(0.0 <= score <= 1.0 for _, score in scored)
    relevance = store.similarity_search_with_relevance_scores("alpha beta", k=3)
    assert [score for _, score in relevance] == [score for _, score in scored]


def test_source_filter_before_k(store: KBVectorStore) -> None:
    texts = [f"text {i}" for i in range(20)]
    metadatas = [{"source": "a.txt" if i < 19 else "b.txt"} for i in range(20)]
    store.add_texts(texts, metadatas)
    docs = store.similarity_search("text 1", k=2, filter={"source": "b.txt"})
    assert [d.page_content for d in docs] == ["text 19"]
    with pytest.raises(ValueError, match="source"):
        store.similarity_search("x", filter={"author": "me"})


def test_mmr_prefers_diverse_results(store: KBVectorStore) -> None:
    e1, e2 = np.eye(32, dtype=np.float32)[:2]
    vectors = np.stack([e1, e1, e2])  # two duplicates and one different chunk
    store.kb.sync([make_doc("/d/x.txt", ["dup one", "dup two", "other"], vectors)], [])
    query = list(e1 + 0.8 * e2)
    plain = store.similarity_search_by_vector(query, k=2)
    assert {d.page_content for d in plain} == {"dup one", "dup two"}
    diverse = store.max_marginal_relevance_search_by_vector(query, k=2, fetch_k=3)
    texts = [d.page_content for d in diverse]
    assert texts[0] in ("dup one", "dup two") and texts[1] == "other"


def test_file_chunks_carry_their_origin(store: KBVectorStore) -> None:
    vector = np.ones((1, 32), dtype=np.float32)
    store.kb.sync([make_doc("/docs/guide.md", ["installing the driver"], vector)], [])
    (doc,) = store.similarity_search_by_vector(list(vector[0]), k=1)
    assert doc.metadata["source"] == "guide.md" and doc.metadata["kb"] == "lc"
    # Deleting a file chunk through LangChain removes that chunk (and the emptied document).
    assert doc.id is not None
    store.delete([doc.id])
    assert store.kb.documents() == []


def test_delete_everything_is_refused(store: KBVectorStore) -> None:
    with pytest.raises(ValueError):
        store.delete(None)


def test_from_texts_and_retriever(tmp_path: Path) -> None:
    store = KBVectorStore.from_texts(
        ["知识库问答", "driver 450.80.02"],
        DeterministicFakeEmbedding(size=8),
        [{"n": 1}, {"n": 2}],
        ids=["x", "y"],
        kbs_dir=tmp_path,
        kb_name="made",
    )
    assert store.kb.info().embedding == "DeterministicFakeEmbedding"
    retriever = store.as_retriever(search_kwargs={"k": 1})
    assert retriever.invoke("450.80.02") == [
        Document(id="y", page_content="driver 450.80.02", metadata={"n": 2})
    ]
    store.kb.close()
    again = KBVectorStore.from_texts(
        ["more"], DeterministicFakeEmbedding(size=8), kbs_dir=tmp_path, kb_name="made"
    )
    assert again.kb.info().chunks == 3
    again.kb.close()


async def test_async_retriever(store: KBVectorStore) -> None:
    await store.aadd_texts(["one fish", "two fish"], ids=["1", "2"])
    docs = await store.as_retriever(search_kwargs={"k": 1}).ainvoke("two fish")
    assert [d.id for d in docs] == ["2"]
