"""The import directions between packages (kbqa/devtools/layers.py) on the real tree and on
small trees written here, each holding one import that goes the wrong way or one that is fine."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbqa.devtools import layers

REPO = Path(__file__).resolve().parents[1]


def test_the_source_tree_follows_the_layers(capsys: pytest.CaptureFixture[str]) -> None:
    assert layers.main() == 0, capsys.readouterr().out


def test_every_top_level_package_of_the_distribution_is_checked() -> None:
    # A new top-level package (or `ingest` renamed `kbqa.ingest`) must appear in the table.
    folders = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests", "bench"}
    assert folders <= set(layers.PACKAGES)


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for package in layers.PACKAGES:
        (root / package).mkdir(exist_ok=True)
        (root / package / "__init__.py").touch()
    return root


def _reported(root: Path) -> list[tuple[str, int, str, str]]:
    return [(str(v.path), v.line, v.importer, v.imported) for v in layers.check(root)]


def test_ingest_importing_the_settings_is_reported_even_inside_a_function(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "kbqa/settings.py": "",
            "ingest/pipeline.py": (
                "import kbqa.storage.kb\n\n\ndef run():\n    from kbqa.settings import Settings\n"
            ),
            "storage/kb.py": "",
        },
    )
    assert _reported(root) == [("ingest/pipeline.py", 5, "kbqa.ingest.pipeline", "kbqa.settings")]


def test_storage_may_not_import_ingest_but_ingest_may_import_storage(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "storage/kb.py": "from kbqa.ingest import pipeline\n",
            "ingest/pipeline.py": "from kbqa.storage.kb import KnowledgeBase\n",
        },
    )
    assert _reported(root) == [("storage/kb.py", 1, "kbqa.storage.kb", "kbqa.ingest.pipeline")]


def test_nothing_below_the_front_ends_imports_them(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "kbqa/chain.py": "",
            "kbqa/server/app.py": "from kbqa.chain import QAChain\nfrom kbqa import mcp_server\n",
            "kbqa/mcp_server.py": "",
            "kbqa/llm/openai_chat.py": "from ..server import app\n",
            "kbqa/retrieval.py": "import kbqa.chain\n",
        },
    )
    assert _reported(root) == [
        ("kbqa/llm/openai_chat.py", 1, "kbqa.llm.openai_chat", "kbqa.server.app"),
        ("kbqa/retrieval.py", 1, "kbqa.retrieval", "kbqa.chain"),
    ]


def test_a_kbqa_module_missing_from_the_table_may_import_nothing_of_kbqa(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {"kbqa/settings.py": "", "kbqa/newcomer.py": "from kbqa import settings\n"},
    )
    assert _reported(root) == [("kbqa/newcomer.py", 1, "kbqa.newcomer", "kbqa.settings")]


def test_the_longest_prefix_decides_a_modules_unit() -> None:
    assert layers.unit_of("kbqa.chatglm.model") == ("kbqa.chatglm", _layer("foundations"))
    assert layers.unit_of("kbqa.finetune_data") == ("kbqa.finetune_data", _layer("answering"))
    assert layers.unit_of("kbqa.cli.main") == ("kbqa.cli", _layer("front ends"))
    assert layers.unit_of("numpy") is None


def _layer(name: str) -> int:
    return [layer for layer, _ in layers.LAYERS].index(name)
