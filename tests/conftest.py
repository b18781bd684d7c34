"""Fixtures shared across test folders."""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres_server import PostgresServer, find_binaries


# Import names: ingest/, storage/ and prompts/ are kbqa.ingest, kbqa.storage and kbqa.prompts
# (symlinked under kbqa/). The repository root is on sys.path here, so their bare names would
# load the same files a second time as other modules (two KnowledgeBase classes, a monkeypatch
# target string in the bare form patching a copy nobody uses): refuse them.
class _RefuseBareNames(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname.partition(".")[0] in ("ingest", "storage", "prompts"):
            raise ImportError(f"import kbqa.{fullname}, not {fullname}", name=fullname)
        return None


sys.meta_path.insert(0, _RefuseBareNames())

# Bilingual lines written for these tests. No emoji and few rare characters on purpose: those
# must go through SentencePiece's byte fallback, which the streaming tests exercise. One line
# per sentence, so "\n" is unseen and becomes the byte piece <0x0A>, as in the real model.
_SP_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A knowledge base answers questions from local documents.",
    "Please cite the sources you used in your answer.",
    "The model runs on a single GPU or on the CPU.",
    "Hello world, this is a small test of the tokenizer.",
    "知识库问答系统可以回答你的问题。",
    "你好，世界！今天天气很好。",
    "请根据已知信息回答问题，并注明出处。",
    "模型在本地运行，数据不会离开这台机器。",
    "我们使用中文和英文两种语言进行测试。",
    "[Round 1] 问：你好 答：你好！有什么可以帮你的吗？",
    "[Round 2] 问：北京是中国的首都吗？ 答：是的。",
    "Round one, round two, round three: questions and answers.",
    "数字 0 1 2 3 4 5 6 7 8 9 和标点 , . ; : ! ? ( ) [ ] 也要覆盖。",
]


def train_sentencepiece(path: Path, vocab_size: int = 500) -> Path:
    """Train a small byte-fallback BPE SentencePiece model at `path` (about 50 ms)."""
    import sentencepiece

    with path.open("wb") as f:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(_SP_CORPUS * 20),
            model_writer=f,
            model_type="bpe",
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            byte_fallback=True,
            character_coverage=1.0,
            # Keep text as written (no NFKC folding of full-width "：" or collapsing of
            # spaces), like ChatGLM2's own model, so decode(encode(s)) == s.
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_digits=True,
            minloglevel=2,
        )
    return path


@pytest.fixture(scope="session")
def sp_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_sentencepiece(tmp_path_factory.mktemp("spm") / "tokenizer.model")


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for a module whose models are small (the tiny ChatGLM2, the bundled
    135M SmolLM2): their matrices gain little from a second thread, and on a loaded 2-core
    machine each parallel step waits for a thread the scheduler has not run yet, so a call
    stalls for seconds (LangChain's standard tests on SmolLM2: ~170 s on two threads beside a
    busy loop, ~70 s on one). The answers are the same; only the time differs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the whole session, stopped at its end; skipped (with the
    reason) where the binaries or the psycopg driver are missing."""
    bindir, why_not = find_binaries()
    if bindir is None:
        pytest.skip(why_not)
    pytest.importorskip("psycopg", reason="the `postgres` extra (psycopg) is not installed")
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty database of the session's cluster (one per test)."""
    from kbqa.storage import pg_pool

    url = postgres_server.create_database()
    yield url
    pg_pool.close(url)  # this process's connections to it; the cluster keeps the database
