"""The source viewer's routes over real HTTP: a document's chunks and its original file.

The KB is made at test time from files written here (one with a hostile name, one replaced by
a 30 MB sparse file after ingest, one deleted, one swapped for a symlink); the server has an
API key, so every request but the 401 checks sends it.
"""

from __future__ import annotations

import re
import tracemalloc
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_helpers import (
    DOCUMENTS,
    LiveServer,
    make_home,
    serve_with_model,
    server_settings,
    write_documents,
)

from kbqa.ingest.pipeline import ingest_paths
from tests.fake_chat import FakeChat
from tests.ingest.ingest_documents import pdf_bytes

KEY = "viewer-test-key"
HOSTILE_NAME = 'evil "quote"; x=1\\ \r\n<img src=x onerror=y>文档 😀.txt'
"""Quotes, `;`, a backslash, CR/LF, markup, CJK and an emoji: legal in a Linux file name."""
BIG_BYTES = 30 * 1024 * 1024


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Path]]:
    home = make_home(tmp_path_factory, "viewer-home")
    folder = write_documents(home.parent / f"{home.name}-docs")
    (folder / HOSTILE_NAME).write_text("The hostile file names a teal heron.\n", encoding="utf-8")
    for name in ("big.txt", "gone.txt", "swapped.txt", "removed.txt"):
        (folder / name).write_text(f"{name} holds a few words about herons.\n", encoding="utf-8")
    (folder / "pages.pdf").write_bytes(pdf_bytes([["First page: herons."], ["Second page: teal."]]))
    report = ingest_paths(server_settings(home), "default", [folder])
    assert not report.failed, report.failed
    server = serve_with_model(home, FakeChat(), api_key=KEY)
    yield server, folder
    server.stop()


@pytest.fixture
def client(viewer: tuple[LiveServer, Path]) -> Iterator[httpx.Client]:
    with viewer[0].client(headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client


def doc_ids(client: httpx.Client, kb: str = "default") -> dict[str, str]:
    listing = client.get(f"/v1/kbs/{kb}/documents").json()["documents"]
    return {d["source"]: d["doc_id"] for d in listing}


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message"} and error["message"]
    if code is not None:
        assert error["code"] == code


def disposition_params(header: str) -> dict[str, str]:
    """Parameters of a Content-Disposition header, quoted strings unquoted (RFC 6266)."""
    params = {}
    for match in re.finditer(r';\s*([\w*]+)=("(?:[^"\\]|\\.)*"|[^;\s]*)', header):
        value = match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[match.group(1).lower()] = value
    return params


def test_metadata_and_chunks_in_order(
    client: httpx.Client, viewer: tuple[LiveServer, Path]
) -> None:
    doc_id = doc_ids(client)["zephyr.md"]
    response = client.get(f"/v1/kbs/default/documents/{doc_id}")
    assert response.status_code == 200, response.text
    body = response.json()
    document = body["document"]
    path = viewer[1] / "zephyr.md"
    assert document == {
        "doc_id": doc_id,
        "source": "zephyr.md",
        "path": str(path.resolve()),
        "chunks": len(body["chunks"]),
        "content_type": "text/markdown",
        "available": True,
        "size": path.stat().st_size,
        "modified": False,
    }
    chunks = body["chunks"]
    assert [c["position"] for c in chunks] == sorted(c["position"] for c in chunks)
    assert set(chunks[0]) == {"chunk_id", "position", "text", "page", "heading"}
    text = " ".join(c["text"] for c in chunks)
    assert "412 grams" in text and "31 hours" in text
    assert text.index("412 grams") < text.index("31 hours")  # reading order
    assert any(c["heading"] and "Battery" in c["heading"] for c in chunks)
    # The chunk ids are the ones answers cite: search returns the same ids and texts.
    hits = client.post("/v1/kbs/default/search", json={"query": "Zephyr-9 battery hours"}).json()
    cited = next(h for h in hits["results"] if h["doc_id"] == doc_id)
    assert {"chunk_id": cited["chunk_id"], "text": cited["text"]} in [
        {"chunk_id": c["chunk_id"], "text": c["text"]} for c in chunks
    ]


def test_content_is_the_original_with_its_type(client: httpx.Client) -> None:
    for source, kind in (("zephyr.md", "text/markdown"), ("知识.md", "text/markdown")):
        response = client.get(f"/v1/kbs/default/documents/{doc_ids(client)[source]}/content")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].split(";")[0] == kind
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.content == DOCUMENTS[source].encode()
        assert int(response.headers["content-length"]) == len(response.content)
        params = disposition_params(response.headers["content-disposition"])
        assert response.headers["content-disposition"].startswith("inline;")
        assert urllib.parse.unquote(params["filename*"].removeprefix("UTF-8''")) == source
    download = client.get(
        f"/v1/kbs/default/documents/{doc_ids(client)['zephyr.md']}/content?download=true"
    )
    assert download.headers["content-disposition"].startswith("attachment;")


def test_pdf_pages_and_type(client: httpx.Client, viewer: tuple[LiveServer, Path]) -> None:
    doc_id = doc_ids(client)["pages.pdf"]
    detail = client.get(f"/v1/kbs/default/documents/{doc_id}").json()
    assert detail["document"]["content_type"] == "application/pdf"
    assert [(c["page"], c["text"]) for c in detail["chunks"]] == [
        (1, "First page: herons."),
        (2, "Second page: teal."),
    ]
    content = client.get(f"/v1/kbs/default/documents/{doc_id}/content")
    assert content.headers["content-type"] == "application/pdf"
    assert content.content == (viewer[1] / "pages.pdf").read_bytes()


def test_hostile_file_name_round_trips_through_content_disposition(client: httpx.Client) -> None:
    doc_id = next(d for s, d in doc_ids(client).items() if "evil" in s)
    response = client.get(f"/v1/kbs/default/documents/{doc_id}/content")
    assert response.status_code == 200, response.text
    header = response.headers["content-disposition"]
    assert header.isascii() and "\r" not in header and "\n" not in header
    params = disposition_params(header)
    assert set(params) == {"filename", "filename*"}  # the `;` and `=` of the name stay inside
    assert params["filename*"].startswith("UTF-8''")
    # The controls (CR, LF) are dropped; everything else comes back exactly.
    expected = HOSTILE_NAME.replace("\r", "").replace("\n", "")
    assert urllib.parse.unquote(params["filename*"].removeprefix("UTF-8''")) == expected
    assert params["filename"].isascii() and '"' not in params["filename"]
    assert params["filename"].endswith(".txt")
    meta = client.get(f"/v1/kbs/default/documents/{doc_id}").json()["document"]
    assert meta["source"] == HOSTILE_NAME and meta["content_type"] == "text/plain"


def test_a_huge_file_streams_without_being_held(
    client: httpx.Client, viewer: tuple[LiveServer, Path]
) -> None:
    """A 30 MB file (sparse, replaced after ingest) is sent whole while the process (server
    and client share it) never holds more than a few blocks of it."""
    big = viewer[1] / "big.txt"
    with big.open("r+b") as handle:
        handle.truncate(BIG_BYTES)
        handle.seek(BIG_BYTES - 4)
        handle.write(b"tail")
    doc_id = doc_ids(client)["big.txt"]
    meta = client.get(f"/v1/kbs/default/documents/{doc_id}").json()["document"]
    assert meta["size"] == BIG_BYTES and meta["modified"] is True and meta["available"] is True
    received = 0
    last = b""
    tracemalloc.start()
    try:
        with client.stream("GET", f"/v1/kbs/default/documents/{doc_id}/content") as response:
            assert response.status_code == 200
            assert int(response.headers["content-length"]) == BIG_BYTES
            for block in response.iter_raw():
                received += len(block)
                last = (last + block)[-4:]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == BIG_BYTES and last == b"tail"
    assert peak < 8 * 1024 * 1024, f"{peak / 2**20:.1f} MiB held while streaming"


def test_deleted_or_swapped_file_is_gone_not_an_error(
    client: httpx.Client, viewer: tuple[LiveServer, Path]
) -> None:
    ids = doc_ids(client)
    (viewer[1] / "gone.txt").unlink()
    secret = viewer[1].parent / "secret.txt"
    secret.write_text("not a document", encoding="utf-8")
    swapped = viewer[1] / "swapped.txt"
    swapped.unlink()
    swapped.symlink_to(secret)
    for source in ("gone.txt", "swapped.txt"):
        meta = client.get(f"/v1/kbs/default/documents/{ids[source]}")
        assert meta.status_code == 200, meta.text
        document = meta.json()["document"]
        assert document["available"] is False and document["size"] is None
        assert meta.json()["chunks"], "the ingested text stays readable"
        content = client.get(f"/v1/kbs/default/documents/{ids[source]}/content")
        assert_error(content, 404, "original_not_found")
        assert "not a document" not in content.text


def test_removed_document_and_kb_get_404(client: httpx.Client) -> None:
    doc_id = doc_ids(client)["removed.txt"]
    assert client.delete(f"/v1/kbs/default/documents/{doc_id}").status_code == 200
    for suffix in ("", "/content"):
        assert_error(
            client.get(f"/v1/kbs/default/documents/{doc_id}{suffix}"), 404, "document_not_found"
        )
    assert client.post("/v1/kbs", json={"name": "short-lived"}).status_code == 201
    assert client.delete("/v1/kbs/short-lived").status_code == 200
    for suffix in ("", "/content"):
        assert_error(
            client.get(f"/v1/kbs/short-lived/documents/{doc_id}{suffix}"), 404, "kb_not_found"
        )


@pytest.mark.parametrize(
    "doc_id",
    [
        "no-such-document",
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "..%2Fzephyr.md",
        "%2Fetc%2Fpasswd",
        "%2E%2E",
        "%00",
        "%2E%2E%5C%2E%2E%5Cwindows",
        "zephyr.md",
    ],
)
def test_path_tricks_in_doc_ids_get_404(client: httpx.Client, doc_id: str) -> None:
    for suffix in ("", "/content"):
        response = client.get(f"/v1/kbs/default/documents/{doc_id}{suffix}")
        assert_error(response, 404)
        assert "root:" not in response.text


def test_recorded_path_as_doc_id_is_not_a_document(
    client: httpx.Client, viewer: tuple[LiveServer, Path]
) -> None:
    """The KB knows documents by path too (for removal); the viewer takes doc ids only."""
    path = urllib.parse.quote(str((viewer[1] / "zephyr.md").resolve()), safe="")
    assert_error(client.get(f"/v1/kbs/default/documents/{path}/content"), 404)


def test_bad_names_and_overlong_ids_are_refused(client: httpx.Client) -> None:
    assert_error(client.get(f"/v1/kbs/default/documents/{'x' * 5000}"), 422, "invalid_request")
    assert_error(client.get("/v1/kbs/%2E%2Ehidden/documents/x"), 422, "invalid_request")
    assert_error(client.get("/v1/kbs/nope/documents/x/content"), 404, "kb_not_found")


def test_both_routes_need_the_key(viewer: tuple[LiveServer, Path], client: httpx.Client) -> None:
    doc_id = doc_ids(client)["zephyr.md"]
    with viewer[0].client() as anonymous:
        for suffix in ("", "/content"):
            response = anonymous.get(f"/v1/kbs/default/documents/{doc_id}{suffix}")
            assert_error(response, 401, "unauthorized")
            wrong = anonymous.get(
                f"/v1/kbs/default/documents/{doc_id}{suffix}",
                headers={"Authorization": "Bearer wrong"},
            )
            assert_error(wrong, 401, "unauthorized")
