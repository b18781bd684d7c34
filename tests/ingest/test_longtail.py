"""The long tail through `unstructured` (its extra): documents made here with pandoc (the
binary the extra installs) and the standard library, read offline.

Skipped, with the reason, where the extra is not installed; scripts/setup.sh installs it.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest

from kbqa.ingest.loaders import LONG_TAIL_EXTENSIONS, SUPPORTED_EXTENSIONS, load_document
from kbqa.ingest.pipeline import ingest_paths
from kbqa.ingest.tables import TableSection
from kbqa.ingest.types import LoadError
from kbqa.kb_admin import list_documents
from kbqa.settings import load_settings
from tests.model_cache import link_models

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("unstructured") is None,
    reason="the unstructured extra is not installed (pip install -e '.[unstructured]')",
)
REPO = Path(__file__).resolve().parents[2]

# Written for this test: a heading path, Chinese and English paragraphs, a table.
MARKDOWN = """# Pump maintenance

The coolant pump must be inspected every 400 hours. Replace the seal when it leaks.

## 备件

冷却泵的密封圈每年更换一次，型号为 KX-7。

| part | interval |
|------|----------|
| seal | 400 h    |
| filter | 90 days |
"""
RST = """Pump maintenance
================

The coolant pump must be inspected every 400 hours. Replace the seal when it leaks.

备件
----

冷却泵的密封圈每年更换一次，型号为 KX-7。
"""
ORG = """* Pump maintenance
The coolant pump must be inspected every 400 hours. Replace the seal when it leaks.
** 备件
冷却泵的密封圈每年更换一次，型号为 KX-7。
"""


def _pandoc() -> str:
    import pypandoc

    return str(pypandoc.get_pandoc_path())


def make_documents(folder: Path) -> dict[str, Path]:
    """One file of each long-tail format this machine reads (no .msg writer exists here)."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "source.markdown.txt"
    source.write_text(MARKDOWN, encoding="utf-8")
    made = {}
    for extension in (".epub", ".odt", ".rtf"):
        target = folder / f"manual{extension}"
        subprocess.run(
            [_pandoc(), "-s", "-f", "markdown", str(source), "-o", str(target)], check=True
        )
        made[extension] = target
    source.unlink()
    (folder / "manual.rst").write_text(RST, encoding="utf-8")
    (folder / "manual.org").write_text(ORG, encoding="utf-8")
    message = EmailMessage()
    message["From"], message["To"] = "ops@example.org", "team@example.org"
    message["Subject"] = "Pump schedule"
    message.set_content("The coolant pump must be inspected every 400 hours, code KX-7.")
    (folder / "mail.eml").write_bytes(bytes(message))
    made |= {".rst": folder / "manual.rst", ".org": folder / "manual.org"}
    made[".eml"] = folder / "mail.eml"
    return made


def test_the_extra_adds_its_formats() -> None:
    assert {".epub", ".odt", ".rtf", ".rst", ".org", ".eml", ".msg"} <= LONG_TAIL_EXTENSIONS
    assert LONG_TAIL_EXTENSIONS <= SUPPORTED_EXTENSIONS
    assert (".doc" in LONG_TAIL_EXTENSIONS) == (shutil.which("soffice") is not None)


@pytest.mark.parametrize("extension", [".epub", ".odt", ".rtf", ".rst", ".org"])
def test_a_document_keeps_its_headings_and_text(tmp_path: Path, extension: str) -> None:
    path = make_documents(tmp_path)[extension]
    sections = load_document(path, max_bytes=10 * 2**20)
    text = "\n".join(s.text for s in sections)
    assert "inspected every 400 hours" in text and "密封圈每年更换一次" in text
    headings = {s.heading for s in sections}
    assert "Pump maintenance" in headings and "Pump maintenance > 备件" in headings
    if extension in (".epub", ".odt", ".rtf"):  # the table survives pandoc's conversion
        tables = [s for s in sections if isinstance(s, TableSection)]
        assert [t.text for t in tables] == [
            "part: seal; interval: 400 h\npart: filter; interval: 90 days"
        ]


def test_an_email_is_read_under_its_subject(tmp_path: Path) -> None:
    (section,) = load_document(make_documents(tmp_path)[".eml"], max_bytes=2**20)
    assert section.heading == "Pump schedule" and "code KX-7" in section.text


def test_a_corrupt_epub_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.epub"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(LoadError) as caught:
        load_document(bad, max_bytes=2**20)
    assert "\n" not in str(caught.value)


def test_ingest_reads_them_like_any_document(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    make_documents(folder)
    settings = load_settings(tmp_path / "home")
    report = ingest_paths(settings, "tail", [folder])
    assert report.failed == [] and report.skipped == [] and report.added == 6
    sources = {d["source"] for d in list_documents(settings, "tail")}
    assert sources == {f"manual{e}" for e in (".epub", ".odt", ".rtf", ".rst", ".org")} | {
        "mail.eml"
    }


_OFFLINE_RUN = """
import json, socket, sys
from pathlib import Path
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args[1:] or args)[:200])
    raise OSError("network disabled by the test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
from kbqa.ingest.loaders import load_document
texts = {p: "\\n".join(s.text for s in load_document(Path(p), max_bytes=2**24))
         for p in sys.argv[1:]}
print(json.dumps({"attempts": attempts, "texts": texts}))
"""


def test_reading_them_needs_no_network(tmp_path: Path) -> None:
    """A fresh interpreter (so unstructured's import-time telemetry is covered too) in which
    every socket connection and name lookup fails and is recorded; in its own network
    namespace, with no network at all, where `unshare` is allowed."""
    paths = [str(p) for p in make_documents(tmp_path / "docs").values()]
    command = [sys.executable, "-c", _OFFLINE_RUN, *paths]
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"]).returncode == 0:
        command = ["unshare", "-n", *command]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["attempts"] == []
    assert all("400 hours" in text for text in result["texts"].values())


_WITHOUT_THE_EXTRA = """
import json, sys
from pathlib import Path

class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "unstructured":
            raise ModuleNotFoundError(name)

sys.meta_path.insert(0, Hide())
from kbqa.ingest.pipeline import ingest_paths
from kbqa.settings import load_settings
report = ingest_paths(load_settings(sys.argv[2]), "plain", [Path(sys.argv[1])])
print(json.dumps(report.to_json()))
"""


def test_without_the_extra_they_are_skipped_as_unsupported(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    make_documents(folder)
    (folder / "notes.txt").write_text("Plain notes stay readable.", encoding="utf-8")
    home = link_models(tmp_path / "home")  # the embedding's ONNX export is made once per run
    command = [sys.executable, "-c", _WITHOUT_THE_EXTRA, str(folder), str(home)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["added"] == 1 and report["failed"] == []
    assert sorted(Path(s["path"]).suffix for s in report["skipped"]) == sorted(
        [".eml", ".epub", ".odt", ".org", ".rst", ".rtf"]
    )
    assert all("unsupported" in s["reason"] for s in report["skipped"])


def test_config_show_names_the_formats(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kbqa.cli import app

    result = CliRunner().invoke(app, ["config", "show", "--json", "--home", str(tmp_path)])
    formats = json.loads(result.stdout)["formats"]
    assert formats == {
        "supported": sorted(SUPPORTED_EXTENSIONS),
        "unstructured": sorted(LONG_TAIL_EXTENSIONS),
    }
    text = CliRunner().invoke(app, ["config", "show", "--home", str(tmp_path)]).stdout
    assert "# of them through unstructured: " + " ".join(sorted(LONG_TAIL_EXTENSIONS)) in text


@pytest.mark.skipif(shutil.which("soffice") is None, reason="LibreOffice (soffice) is absent")
def test_legacy_word_and_powerpoint_through_libreoffice(tmp_path: Path) -> None:
    import docx
    from pptx import Presentation

    document = docx.Document()
    document.add_heading("Pump maintenance", level=1)
    document.add_paragraph("The coolant pump must be inspected every 400 hours.")
    document.save(str(tmp_path / "manual.docx"))
    deck = Presentation()
    slide = deck.slides.add_slide(deck.slide_layouts[1])
    slide.shapes.title.text = "Seal schedule"
    slide.placeholders[1].text = "冷却泵的密封圈每年更换一次。"
    deck.save(str(tmp_path / "deck.pptx"))
    for source, target in (("manual.docx", "doc"), ("deck.pptx", "ppt")):
        subprocess.run(
            ["soffice", "--headless", "--convert-to", target, source, "--outdir", str(tmp_path)],
            cwd=tmp_path,
            check=True,
            capture_output=True,
            timeout=300,
        )
    doc = load_document(tmp_path / "manual.doc", max_bytes=2**24)
    assert any("inspected every 400 hours" in s.text for s in doc)
    assert {s.heading for s in doc} == {"Pump maintenance"}
    ppt = load_document(tmp_path / "deck.ppt", max_bytes=2**24)
    assert any("密封圈每年更换一次" in s.text and s.page == 1 for s in ppt)
