"""Knowledge-base routes over real HTTP: create, upload → job → documents, search, delete."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_helpers import LiveServer, wait_for_job

from kbqa.storage.embeddings import Embedder
from tests.waiting import HANG_GUARD_S


def upload(client: httpx.Client, kb: str, *files: tuple[str, bytes]) -> httpx.Response:
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    return client.post(f"/v1/kbs/{kb}/documents", files=parts)


def raw_upload(client: httpx.Client, kb: str, filename: str, data: bytes) -> httpx.Response:
    """A multipart upload with the file name sent byte for byte (httpx would escape it)."""
    body = (
        b'--xx\r\nContent-Disposition: form-data; name="files"; filename="'
        + filename.encode()
        + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        + data
        + b"\r\n--xx--\r\n"
    )
    headers = {"content-type": "multipart/form-data; boundary=xx"}
    return client.post(f"/v1/kbs/{kb}/documents", content=body, headers=headers)


def upload_and_wait(client: httpx.Client, kb: str, *files: tuple[str, bytes]) -> dict[str, Any]:
    response = upload(client, kb, *files)
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["job_id"])
    assert job["state"] == "done", job
    return job


def documents(client: httpx.Client, kb: str) -> dict[str, dict[str, Any]]:
    response = client.get(f"/v1/kbs/{kb}/documents")
    assert response.status_code == 200, response.text
    return {d["source"]: d for d in response.json()["documents"]}


def test_list_shows_the_default_kb(live: LiveServer) -> None:
    with live.client() as client:
        kbs = {kb["name"]: kb for kb in client.get("/v1/kbs").json()["kbs"]}
    assert kbs["default"]["documents"] == 3
    assert kbs["default"]["chunks"] >= 3
    assert kbs["default"]["backend"] == "faiss"


def test_kb_lifecycle_upload_search_remove(live: LiveServer) -> None:
    uploads = live.settings.home / "uploads" / "notes"
    with live.client() as client:
        created = client.post("/v1/kbs", json={"name": "notes"})
        assert created.status_code == 201, created.text
        assert created.json()["documents"] == 0
        again = client.post("/v1/kbs", json={"name": "notes"})
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "kb_exists"

        job = upload_and_wait(
            client, "notes", ("otters.md", b"# Otters\n\nSea otters hold hands.\n")
        )
        assert job["result"]["added"] == 1
        assert job["progress"] == {
            "files_total": 1,
            "files_done": 1,
            "chunks": 1,
            "pages_done": 0,
            "current": None,
        }

        # A second upload adds a document and leaves the first one alone.
        job = upload_and_wait(client, "notes", ("owls.txt", b"Barn owls swallow mice whole."))
        assert job["result"]["added"] == 1 and job["result"]["removed"] == 0
        assert set(documents(client, "notes")) == {"otters.md", "owls.txt"}

        # Uploading the same name again with new content updates that document.
        job = upload_and_wait(client, "notes", ("owls.txt", b"Snowy owls hunt by day."))
        assert job["result"]["updated"] == 1
        assert sorted(p.name for p in uploads.iterdir()) == ["otters.md", "owls.txt"]

        hits = client.post("/v1/kbs/notes/search", json={"query": "snowy owls", "top_k": 1})
        assert hits.status_code == 200, hits.text
        assert hits.json()["results"][0]["source"] == "owls.txt"
        assert "Snowy owls" in hits.json()["results"][0]["text"]

        doc_id = documents(client, "notes")["otters.md"]["doc_id"]
        removed = client.delete(f"/v1/kbs/notes/documents/{doc_id}")
        assert removed.status_code == 200 and removed.json() == {"removed": doc_id}
        assert set(documents(client, "notes")) == {"owls.txt"}
        assert not (uploads / "otters.md").exists()
        assert client.delete(f"/v1/kbs/notes/documents/{doc_id}").status_code == 404

        assert client.delete("/v1/kbs/notes").json() == {"deleted": "notes"}
        assert not uploads.exists()
        gone = client.get("/v1/kbs/notes/documents")
        assert gone.status_code == 404
        assert gone.json()["error"]["code"] == "kb_not_found"


def test_several_files_in_one_upload(live: LiveServer) -> None:
    with live.client() as client:
        client.post("/v1/kbs", json={"name": "batch"})
        job = upload_and_wait(
            client,
            "batch",
            ("a.md", b"# A\n\nAlpha text."),
            ("b.csv", b"name,value\nbeta,2\n"),
            ("c.txt", b""),
        )
        result = job["result"]
        assert result["added"] == 2
        assert [Path(f["path"]).name for f in result["failed"]] == ["c.txt"]
        assert job["files"] == ["a.md", "b.csv", "c.txt"]
        client.delete("/v1/kbs/batch")


@pytest.mark.parametrize(
    ("raw", "saved"),
    [
        ("../../evil.md", "evil.md"),
        ("/etc/abs.txt", "abs.txt"),
        ("..\\..\\windows.md", "windows.md"),
        (".hidden.md", "hidden.md"),
        ("bell\x07and\u202eflip.txt", "bellandflip.txt"),
        ("nul\x00byte.md", "nulbyte.md"),
        ("../\x00/../up.md", "up.md"),
    ],
)
def test_hostile_file_names_stay_inside_uploads(live: LiveServer, raw: str, saved: str) -> None:
    home = live.settings.home
    with live.client() as client:
        client.post("/v1/kbs", json={"name": "hostile"})
        response = raw_upload(client, "hostile", raw, b"Harmless text about kites.")
        assert response.status_code == 202, response.text
        job = wait_for_job(client, response.json()["job_id"])
        assert job["state"] == "done" and job["result"]["added"] == 1
        assert job["files"] == [saved]
        assert (home / "uploads" / "hostile" / saved).is_file()
        assert not (home.parent / saved).exists() and not (home / saved).exists()
        assert not Path("/etc/abs.txt").exists()
        client.delete("/v1/kbs/hostile")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("../../etc/passwd", "unsupported_type"),
        ("...", "invalid_file_name"),
        ("/", "invalid_file_name"),
        ("payload.exe", "unsupported_type"),
    ],
)
def test_unusable_file_names_are_refused(live: LiveServer, raw: str, code: str) -> None:
    with live.client() as client:
        client.post("/v1/kbs", json={"name": "refuse"})
        response = upload(client, "refuse", (raw, b"text"))
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == code
        assert not any((live.settings.home / "uploads" / "refuse").glob("*"))


def test_upload_over_the_limit_is_413(live: LiveServer) -> None:
    limit = int(live.settings.server.max_upload_mb * 1024 * 1024)
    big = b"x" * (limit + 200_000)
    with live.client() as client:
        client.post("/v1/kbs", json={"name": "big"})
        declared = upload(client, "big", ("big.txt", big))
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "payload_too_large"

        def chunked() -> Any:  # no Content-Length: the limit must hold while the body streams
            yield b"--xx\r\nContent-Disposition: form-data; "
            yield b'name="files"; filename="big.txt"\r\n\r\n'
            for start in range(0, len(big), 1 << 20):
                yield big[start : start + (1 << 20)]
            yield b"\r\n--xx--\r\n"

        streamed = client.post(
            "/v1/kbs/big/documents",
            content=chunked(),
            headers={"content-type": "multipart/form-data; boundary=xx"},
        )
        assert streamed.status_code == 413
        assert streamed.json()["error"]["code"] == "payload_too_large"
    assert not any((live.settings.home / "uploads" / "big").glob("*"))


def test_upload_to_unknown_or_invalid_kb(live: LiveServer) -> None:
    with live.client() as client:
        unknown = upload(client, "nobody", ("a.md", b"text"))
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "kb_not_found"
        invalid = upload(client, ".secret", ("a.md", b"text"))
        assert invalid.status_code == 422
        assert "invalid knowledge base name" in invalid.json()["error"]["message"]
        assert client.post("/v1/kbs/nobody/documents").status_code == 422  # no files field
    assert not (live.settings.home / "uploads" / "nobody").exists()


def test_unknown_job_is_404(live: LiveServer) -> None:
    with live.client() as client:
        response = client.get("/v1/jobs/0123456789abcdef")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"


def test_search_keeps_serving_while_an_upload_is_ingested(
    live: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Searches run between the ingest's embedding batches instead of waiting for it all.

    The upload's embedding is held after its first batch until the searches are answered: a
    search queued behind the whole ingest would never be (the client's timeout fails it)."""
    between_batches, go = threading.Event(), threading.Event()
    embed = Embedder.embed

    def held_embed(
        self: Embedder, texts: list[str], on_batch: Callable[[int], None] | None = None
    ) -> Any:
        def batch_done(n: int) -> None:
            if on_batch is not None:
                on_batch(n)
            if not between_batches.is_set():
                between_batches.set()
                assert go.wait(HANG_GUARD_S), "the searches never finished"

        return embed(self, texts, batch_done)

    monkeypatch.setattr(Embedder, "embed", held_embed)
    # Enough for a few embedding batches (the hold comes after the first), no more: every
    # chunk is embedded once the searches are done.
    paragraphs = [f"Paragraph {i} tells of lighthouse number {i} on the coast." for i in range(800)]
    big = "\n\n".join(paragraphs).encode()
    with live.client() as client:
        client.post("/v1/kbs", json={"name": "busy"})
        job_id = upload(client, "busy", ("lighthouses.txt", big)).json()["job_id"]
        try:
            assert between_batches.wait(HANG_GUARD_S), "the upload was never embedded"
            for _ in range(3):
                response = client.post(
                    "/v1/kbs/default/search", json={"query": "Zephyr battery", "top_k": 2}
                )
                assert response.status_code == 200
                assert response.json()["results"][0]["source"] == "zephyr.md"
            assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "running"
        finally:
            go.set()
        chunks = wait_for_job(client, job_id)["result"]["chunks"]
        assert chunks > 2 * live.settings.embedding.batch_size, chunks
        client.delete("/v1/kbs/busy")


def test_a_kb_deleted_and_created_anew_serves_its_new_content(live: LiveServer) -> None:
    with live.client() as client:
        client.post("/v1/kbs", json={"name": "reborn"})
        upload_and_wait(client, "reborn", ("owls.md", b"# Owls\n\nOwls hunt at night."))
        first = client.post("/v1/kbs/reborn/search", json={"query": "owls"}).json()
        assert first["results"][0]["source"] == "owls.md"
        client.delete("/v1/kbs/reborn")
        client.post("/v1/kbs", json={"name": "reborn"})
        upload_and_wait(client, "reborn", ("cats.md", b"# Cats\n\nCats sleep all day."))
        again = client.post("/v1/kbs/reborn/search", json={"query": "cats"}).json()
        assert [hit["source"] for hit in again["results"]] == ["cats.md"]
        client.delete("/v1/kbs/reborn")
