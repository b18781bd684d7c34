"""A KB whose files are damaged, asked over HTTP and the command line: reported as damaged
(HTTP 500 `kb_damaged`, exit 1, docs/http-api.md and docs/cli.md), not as a configuration
problem to retry later, and the other KBs keep answering."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_helpers import LiveServer, make_home, serve_with_model, server_settings

from kbqa.storage.config import create_kb
from tests.cli_support import kbqa
from tests.fake_chat import FakeChat

DAMAGED = "broken"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with one healthy KB (empty) and one whose database file is not SQLite."""
    home = make_home(tmp_path_factory, "damaged-home")
    settings = server_settings(home)
    for name in ("healthy", DAMAGED):
        create_kb(settings, name, embedding=settings.embedding.model, dim=384).close()
    (home / "kbs" / DAMAGED / "kb.sqlite").write_bytes(b"this is not sqlite" * 100)
    return home


@pytest.fixture(scope="module")
def live(home: Path) -> Iterator[LiveServer]:
    server = serve_with_model(home, FakeChat(fail=True))
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (f"/v1/kbs/{DAMAGED}/search", {"query": "how much memory?"}),
        ("/v1/ask", {"question": "how much memory?", "kb": DAMAGED}),
    ],
)
def test_a_damaged_kb_is_a_500_kb_damaged(live: LiveServer, path: str, body: object) -> None:
    with live.client() as client:
        response = client.post(path, json=body)
        healthy = client.post("/v1/kbs/healthy/search", json={"query": "how much memory?"})
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert error["code"] == "kb_damaged" and DAMAGED in error["message"]
    assert "retry-after" not in response.headers  # waiting does not mend it
    assert healthy.status_code == 200 and healthy.json()["results"] == []


def test_a_damaged_kb_exits_1_naming_it(home: Path, tmp_path: Path) -> None:
    code, out, err = kbqa(home, "search", "how much memory?", "--kb", DAMAGED)
    assert code == 1 and out == ""
    assert err.startswith("error: ") and DAMAGED in err

    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "how much memory?"}) + "\n", encoding="utf-8")
    code, out, err = kbqa(home, "eval", str(questions), "--kb", DAMAGED, "--retrieval-only")
    assert code == 1 and DAMAGED in err

    # A chat opens its KBs before the first question: it stops there, naming the damage.
    code, out, err = kbqa(home, "chat", "--kb", DAMAGED, input="how much memory?\nexit\n")
    assert code == 1 and err.count("error: ") == 1 and "not a readable SQLite database" in err
