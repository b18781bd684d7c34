"""The retrieval evaluation's documents: text that kbqa's developers did not write, read from
packages installed on this machine at run time and written to a temporary folder (never
committed).

- English: the long descriptions (READMEs) in the METADATA of Python packages in the virtual
  environment (jieba's is Chinese).
- Chinese: the Simplified Chinese manual pages of Debian's man-db, passwd and login packages
  (/usr/share/man/zh_CN), rendered to text by `man -l` and given Markdown headings. Several
  are only partly translated, so Chinese and English text mix, as in many engineers' notes.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

PACKAGES = (
    "jieba",
    "faiss-cpu",
    "tiktoken",
    "httpx",
    "uvicorn",
    "pypdf",
    "typer",
    "fastapi",
    "tokenizers",
    "safetensors",
    "sentence-transformers",
    "accelerate",
    "huggingface-hub",
    "starlette",
    "numpy",
    "pandas",
    "transformers",
    "requests",
    "urllib3",
    "idna",
    "hf-xet",
    "jiter",
    "tomli-w",
    "cachetools",
    "psutil",
)
MAN_DIR = Path("/usr/share/man/zh_CN")

# A header or footer line of rendered man output: text, a long run of spaces, more text.
_RUNNING_TITLE = re.compile(r"^\S.*\s{20,}")
_SPACES = re.compile(r"\s{2,}")


@dataclass(frozen=True)
class Corpus:
    root: Path
    files: list[str]
    """Sources (paths relative to root, with `/`)."""
    missing: list[str]
    """Packages or pages that could not be read on this machine."""


def package_readme(name: str) -> str | None:
    try:
        meta = importlib.metadata.metadata(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    body = meta.get_payload() or meta.get("Description") or ""  # type: ignore[attr-defined]
    return str(body).strip() or None


def render_man_page(path: Path) -> str | None:
    """The page as Markdown: `## ` section headings, `### ` subsections, paragraphs."""
    if shutil.which("man") is None:
        return None
    env = {**os.environ, "MANWIDTH": "10000", "LANG": "C.UTF-8", "MAN_KEEP_FORMATTING": ""}
    done = subprocess.run(
        ["man", "-l", str(path)], capture_output=True, env=env, timeout=60, check=False
    )
    if done.returncode != 0 or not done.stdout:
        return None
    lines: list[str] = []
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        if _RUNNING_TITLE.match(line):
            continue
        text = _SPACES.sub(" ", line.strip())
        if not text:
            lines.append("")
        elif not line[0].isspace():
            lines.append(f"## {text}")
        elif line.startswith("   ") and not line.startswith("    "):
            lines.append(f"### {text}")
        else:
            lines.append(text)
    return "\n".join(lines).strip() + "\n"


def write_corpus(root: Path) -> Corpus:
    """Write every readable document under `root` (en/<package>.md, zh/<page>.md)."""
    files: list[str] = []
    missing: list[str] = []
    (root / "en").mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        text = package_readme(name)
        if text is None:
            missing.append(name)
            continue
        (root / "en" / f"{name}.md").write_text(text + "\n", encoding="utf-8")
        files.append(f"en/{name}.md")
    (root / "zh").mkdir(exist_ok=True)
    for page in sorted(MAN_DIR.glob("man*/*.gz")):
        stem = page.name.removesuffix(".gz")  # "man.1"
        text = render_man_page(page)
        if text is None:
            missing.append(f"zh_CN/{stem}")
            continue
        (root / "zh" / f"{stem}.md").write_text(text, encoding="utf-8")
        files.append(f"zh/{stem}.md")
    if not MAN_DIR.is_dir():
        missing.append(str(MAN_DIR))
    return Corpus(root, files, missing)
