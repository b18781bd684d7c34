"""Chinese (and English) documents nobody on the kbqa team wrote, for the Chinese retrieval
and refusal evaluation (question sets: bench/eval_sets/zh_dev.jsonl, zh_heldout.jsonl).

    .venv/bin/python bench/eval_corpus_zh.py DIR          # write the corpus into DIR
    .venv/bin/python bench/eval_corpus_zh.py DIR --check  # only say what is missing

The documents are never committed. They come from three places:

- Public projects' docs, read from git mirrors under --mirrors PATH (default
  $KBQA_BENCH_MIRRORS, else ~/.cache/kbqa/mirrors): one bare git directory per project at
  <mirrors>/<owner>+<name>/repo, read with `git show`. Get each project in MIRRORED with
  `git clone --bare https://github.com/<owner>/<name> <mirrors>/<owner>+<name>/repo`.
  The question sets were written against the commits in MIRRORED's comments.
- Debian's Simplified Chinese manual pages (/usr/share/man/zh_CN), rendered by
  bench/retrieval_corpus.py.
- English: installed Python packages' READMEs (their METADATA) and an English PDF from
  /usr/share/doc (the shared-mime-info specification).

Layout of DIR: zh/<project>/<path> for Chinese documents, en/<project>/<path> for English
ones, zh/man/<page>.md, en/packages/<name>.md, en/pdf/<name>.pdf. The question sets name
their expected sources by these paths.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval_corpus import MAN_DIR, package_readme, render_man_page

MIRRORS = Path(os.environ.get("KBQA_BENCH_MIRRORS", "~/.cache/kbqa/mirrors")).expanduser()

MIRRORED: dict[str, tuple[str, dict[str, str]]] = {
    # project folder: (owner+name of the mirror, {path in the repository: path under DIR})
    # THUDM/ChatGLM2-6B at cb8e8b43c0951b32614f25c03e1ab593a0603a1c
    "chatglm2-6b": (
        "THUDM+ChatGLM2-6B",
        {
            "README.md": "zh/chatglm2-6b/README.md",
            "FAQ.md": "zh/chatglm2-6b/FAQ.md",
            "ptuning/README.md": "zh/chatglm2-6b/ptuning/README.md",
            "README_EN.md": "en/chatglm2-6b/README_EN.md",
        },
    ),
    # THUDM/ChatGLM-6B at 401bf3a8a7dd8a26fba189551dccfc61a7079b4e
    "chatglm-6b": (
        "THUDM+ChatGLM-6B",
        {
            "README.md": "zh/chatglm-6b/README.md",
            "FAQ.md": "zh/chatglm-6b/FAQ.md",
            "UPDATE.md": "zh/chatglm-6b/UPDATE.md",
            "ptuning/README.md": "zh/chatglm-6b/ptuning/README.md",
            "README_en.md": "en/chatglm-6b/README_en.md",
        },
    ),
    # QwenLM/Qwen at 2df8e8ac450fa185c421a08b0090ef81826caa6e
    "qwen": (
        "QwenLM+Qwen",
        {
            "README_CN.md": "zh/qwen/README_CN.md",
            "FAQ_zh.md": "zh/qwen/FAQ_zh.md",
            "tokenization_note_zh.md": "zh/qwen/tokenization_note_zh.md",
            "README.md": "en/qwen/README.md",
            "FAQ.md": "en/qwen/FAQ.md",
        },
    ),
    # fxsjy/jieba at 67fa2e36e72f69d9134b8a1037b83fbb070b9775 (Chinese first, then English)
    "jieba": ("fxsjy+jieba", {"README.md": "zh/jieba/README.md"}),
    # hiyouga/LLaMA-Factory at ff6d4d12eeb035d6ce06805a5733dd7b29f2ac30
    "llama-factory": (
        "hiyouga+LLaMA-Factory",
        {
            "README_zh.md": "zh/llama-factory/README_zh.md",
            "data/README_zh.md": "zh/llama-factory/data/README_zh.md",
            "README.md": "en/llama-factory/README.md",
        },
    ),
}
PACKAGES = ("httpx", "typer", "fastapi", "pypdf", "tiktoken", "faiss-cpu", "requests", "uvicorn")
PDFS = (Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf"),)


@dataclass
class Corpus:
    root: Path
    files: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """What could not be read here, each with the reason and how to get it."""


def _git_show(mirror: Path, path: str) -> bytes | None:
    done = subprocess.run(
        ["git", "--git-dir", str(mirror), "show", f"HEAD:{path}"],
        capture_output=True,
        check=False,
    )
    return done.stdout if done.returncode == 0 else None


def _write(corpus: Corpus, relative: str, data: bytes, write: bool) -> None:
    if write:
        target = corpus.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    corpus.files.append(relative)


def write_corpus(root: Path, mirrors: Path = MIRRORS, *, write: bool = True) -> Corpus:
    corpus = Corpus(root)
    for mirror_name, paths in MIRRORED.values():
        mirror = mirrors / mirror_name / "repo"
        owner_repo = mirror_name.replace("+", "/")
        if not mirror.is_dir():
            corpus.missing.append(
                f"{mirror}: no mirror of github:{owner_repo} (fetch it, or "
                f"git clone --bare https://github.com/{owner_repo} {mirror})"
            )
            continue
        for path, relative in paths.items():
            data = _git_show(mirror, path)
            if data is None:
                corpus.missing.append(f"{owner_repo}:{path}: not in the mirror's HEAD")
                continue
            _write(corpus, relative, data, write)
    for page in sorted(MAN_DIR.glob("man*/*.gz")):
        text = render_man_page(page)
        if text is None:
            corpus.missing.append(f"{page}: man could not render it")
            continue
        _write(corpus, f"zh/man/{page.name.removesuffix('.gz')}.md", text.encode(), write)
    if not MAN_DIR.is_dir():
        corpus.missing.append(f"{MAN_DIR}: Debian's zh_CN manual pages are not installed")
    for name in PACKAGES:
        readme = package_readme(name)
        if readme is None:
            corpus.missing.append(f"{name}: package not installed in this environment")
            continue
        _write(corpus, f"en/packages/{name}.md", (readme + "\n").encode(), write)
    for pdf in PDFS:
        if not pdf.is_file():
            corpus.missing.append(f"{pdf}: not installed (Debian package shared-mime-info)")
            continue
        _write(corpus, f"en/pdf/{pdf.name}", pdf.read_bytes(), write)
    return corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dir", type=Path, help="folder to write the documents into")
    parser.add_argument("--mirrors", type=Path, default=MIRRORS, help="where the mirrors are")
    parser.add_argument("--check", action="store_true", help="write nothing, list what is missing")
    args = parser.parse_args()
    if not args.check and args.dir.exists():
        shutil.rmtree(args.dir)
    corpus = write_corpus(args.dir, args.mirrors, write=not args.check)
    zh = sum(f.startswith("zh/") for f in corpus.files)
    print(f"{len(corpus.files)} documents ({zh} Chinese, {len(corpus.files) - zh} English)")
    for line in corpus.missing:
        print(f"missing: {line}", file=sys.stderr)
    if corpus.missing:
        sys.exit(1)


if __name__ == "__main__":
    main()
