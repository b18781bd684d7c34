"""Uploads accept what the `unstructured` extra reads, and /healthz says so."""

from __future__ import annotations

import importlib.util

import pytest
from server_helpers import make_home, serve_with_model, wait_for_job

from kbqa.ingest.loaders import SUPPORTED_EXTENSIONS
from tests.fake_chat import FakeChat

RST = """Pump maintenance
================

The coolant pump must be inspected every 400 hours, code KX-7.
"""


@pytest.mark.skipif(
    importlib.util.find_spec("unstructured") is None,
    reason="the unstructured extra is not installed (pip install -e '.[unstructured]')",
)
def test_an_upload_may_carry_a_long_tail_format(tmp_path_factory: pytest.TempPathFactory) -> None:
    server = serve_with_model(make_home(tmp_path_factory, "tail-upload"), FakeChat())
    try:
        with server.client() as client:
            assert client.get("/healthz").json()["formats"] == sorted(SUPPORTED_EXTENSIONS)
            assert client.post("/v1/kbs", json={"name": "tail"}).status_code == 201
            files = [("files", ("manual.rst", RST.encode(), "text/x-rst"))]
            response = client.post("/v1/kbs/tail/documents", files=files)
            assert response.status_code == 202
            job = wait_for_job(client, response.json()["job_id"], timeout=300)
            assert job["state"] == "done" and job["result"]["added"] == 1, job
            hits = client.post("/v1/kbs/tail/search", json={"query": "coolant pump code"})
            assert any("KX-7" in hit["text"] for hit in hits.json()["results"])
    finally:
        server.stop()
