"""A query's embedding: the direct forward pass gives encode()'s vector, or is not used."""

from __future__ import annotations

import numpy as np

from storage.embeddings import _direct_query, _load, get_embedder, resolve_model

QUERIES = ["How long are Harbor backups kept?", "公司的年假有多少天？", "", "word " * 600]


def test_query_vector_is_the_one_encode_gives() -> None:
    embedder = get_embedder("default")
    assert embedder._query is not None, "the bundled model takes the direct path"
    for query in QUERIES:
        vector = embedder.embed_query(query)
        assert vector.dtype == np.float32 and vector.shape == (embedder.dim,)
        assert np.array_equal(vector, embedder.embed([query])[0])


def test_a_model_with_a_default_prompt_keeps_encode() -> None:
    model = _load(resolve_model("default"), "cpu")
    model.prompts = {"query": "query: "}
    model.default_prompt_name = "query"
    assert _direct_query(model) is None  # it would leave the prompt out
