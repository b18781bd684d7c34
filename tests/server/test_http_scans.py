"""Scans, photos and slides uploaded over real HTTP: accepted, read by OCR, pages counted in the
job's progress."""

from __future__ import annotations

import io

import pptx
from PIL import Image, ImageDraw, ImageFont
from server_helpers import LiveServer, wait_for_job

FONT = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"


def scan(line: str) -> Image.Image:
    image = Image.new("RGB", (560, 80), "white")
    ImageDraw.Draw(image).text((16, 20), line, font=ImageFont.truetype(FONT, 32), fill="black")
    return image


def test_scanned_pdf_photo_and_deck_upload(live: LiveServer) -> None:
    pdf, png, deck = io.BytesIO(), io.BytesIO(), io.BytesIO()
    scan("Lighthouse keepers").save(
        pdf, format="PDF", save_all=True, append_images=[scan("第二页：灯塔")], resolution=200
    )
    scan("Harbour opens at six").save(png, format="PNG")
    presentation = pptx.Presentation()
    slide = presentation.slides.add_slide(presentation.slide_layouts[1])
    slide.shapes.title.text = "Tides"
    slide.placeholders[1].text = "High tide at noon."
    presentation.save(deck)
    files = [("scan.pdf", pdf), ("harbour.png", png), ("tides.pptx", deck)]
    parts = [("files", (name, data.getvalue(), "application/octet-stream")) for name, data in files]
    with live.client() as client:
        assert client.post("/v1/kbs", json={"name": "scans"}).status_code == 201
        response = client.post("/v1/kbs/scans/documents", files=parts)
        assert response.status_code == 202, response.text
        job = wait_for_job(client, response.json()["job_id"])
        assert job["state"] == "done", job
        assert job["result"]["added"] == 3 and job["result"]["failed"] == []
        # Two PDF pages, one image, one slide deck (not paged in the progress sense).
        assert job["progress"]["pages_done"] == 3 and job["progress"]["current"] is None
        found = client.post("/v1/kbs/scans/search", json={"query": "灯塔", "top_k": 3}).json()
    pages = {(hit["source"], hit["page"]) for hit in found["results"]}
    assert ("scan.pdf", 2) in pages
