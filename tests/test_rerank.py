"""Cross-encoder reranking plumbing, with a tiny randomly initialised cross-encoder saved here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kbqa.errors import ConfigError
from kbqa.ingest.pipeline import ingest_paths
from kbqa.relevance import RELEVANCE
from kbqa.rerank import RERANK, Reranker, RerankerUnavailable, get_reranker, passage
from kbqa.retrieval import Retriever
from kbqa.settings import Settings, load_settings
from kbqa.storage.types import SearchHit

_DOCS = {
    "install.md": "# 安装\n\n先安装 GPU 驱动 450.80.02，再 pip install kbqa。\n",
    "memory.md": "# 显存\n\nINT4 quantization needs about 6 GB of GPU memory.\n",
    "python.txt": "kbqa runs on python 3.11 and newer versions.\n",
    "kb.md": "# 知识库\n\n知识库 stores chunks, vectors and a keyword index.\n",
    "server.txt": "The server answers on port 8000 unless the config says otherwise.\n",
}
_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# BERT's basic tokenisation: lower-cased words, CJK characters and punctuation stand alone.
_BASIC = re.compile(r"[\u4e00-\u9fff]|[a-z0-9]+|[^\sa-z0-9]")
_VOCAB = _SPECIAL + sorted({t for text in _DOCS.values() for t in _BASIC.findall(text.lower())})


def build_cross_encoder(directory: Path, *, num_labels: int = 1, seed: int = 0) -> Path:
    """Save a tiny random BERT sequence classifier as a CrossEncoder directory (~50 ms)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(_VOCAB) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(vocab), model_max_length=128).save_pretrained(directory)
    config = BertConfig(
        vocab_size=len(_VOCAB),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
        num_labels=num_labels,
        initializer_range=0.3,
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.mul_(10.0)  # so that random scores spread over 0..1
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def reranker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cross_encoder(tmp_path_factory.mktemp("reranker") / "tiny-ce")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("rerank-kb")
    docs = base / "docs"
    docs.mkdir()
    for name, text in _DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    report = ingest_paths(load_settings(base / "home"), "default", [docs])
    assert report.failed == [] and report.chunks == len(_DOCS)
    return base / "home"


def _settings(home: Path, reranker: str) -> Settings:
    return load_settings(home, overrides={"retrieval": {"reranker": reranker}})


def test_scores_are_sigmoids_in_0_1_and_differ(reranker_dir: Path) -> None:
    scores = Reranker(str(reranker_dir)).scores("install gpu driver", list(_DOCS.values()))
    assert len(scores) == len(_DOCS)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert len({round(s, 6) for s in scores}) == len(scores)


def test_two_label_classifier_scores_the_relevant_label(tmp_path: Path) -> None:
    directory = build_cross_encoder(tmp_path / "two", num_labels=2, seed=1)
    scores = Reranker(str(directory)).scores("gpu memory", ["int4 needs 6 gb", "server port"])
    assert all(0.0 <= s <= 1.0 for s in scores) and scores[0] != scores[1]


@pytest.mark.parametrize("query", ["安装 GPU 驱动", "How much GPU memory does INT4 need?"])
def test_retriever_orders_by_reranker_scores(reranker_dir: Path, home: Path, query: str) -> None:
    with Retriever(_settings(home, str(reranker_dir))) as retriever:
        hits = retriever.search(query, ["default"], k=3)
    # Five one-chunk documents: every chunk is a candidate, so the top 3 are the reranker's.
    every = {hit.chunk_id: hit for hit in _plain_hits(home, query, k=len(_DOCS))}
    assert len(every) == len(_DOCS)
    expected = get_reranker(str(reranker_dir)).scores(query, [passage(h) for h in every.values()])
    best = sorted(zip(every, expected, strict=True), key=lambda item: -item[1])[:3]
    assert [hit.chunk_id for hit in hits] == [chunk_id for chunk_id, _ in best]
    for hit, (_, score) in zip(hits, best, strict=True):
        assert hit.score == pytest.approx(score) and hit.extra[RERANK] == hit.score
        assert 0.0 <= hit.score <= 1.0
        assert hit.score <= hit.extra[RELEVANCE] <= 1.0


def _plain_hits(home: Path, query: str, k: int) -> list[SearchHit]:
    with Retriever(_settings(home, "")) as retriever:
        return retriever.search(query, ["default"], k=k)


def test_without_reranker_scores_stay_dense(home: Path) -> None:
    hits = _plain_hits(home, "GPU memory", k=3)
    assert hits and all(RERANK not in hit.extra for hit in hits)
    assert all(hit.score == pytest.approx(hit.extra["dense"], abs=1e-6) for hit in hits)


@pytest.mark.parametrize("kind", ["missing", "file", "empty-dir"])
def test_bad_reranker_path_is_a_clear_config_error(tmp_path: Path, home: Path, kind: str) -> None:
    path = tmp_path / "reranker"
    if kind == "file":
        path.write_text("not a model")
    elif kind == "empty-dir":
        path.mkdir()
    with pytest.raises(RerankerUnavailable, match=f"reranker {path}") as caught:
        Reranker(str(path))
    assert "\n" not in str(caught.value)
    with Retriever(_settings(home, str(path))) as retriever, pytest.raises(ConfigError):
        retriever.search("GPU memory", ["default"], k=2)


def test_broken_model_directory_is_a_clear_config_error(tmp_path: Path) -> None:
    path = tmp_path / "broken"
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(RerankerUnavailable, match="cannot load reranker") as caught:
        Reranker(str(path))
    assert "\n" not in str(caught.value)
