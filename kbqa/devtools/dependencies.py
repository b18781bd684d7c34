"""Runtime dependencies = what the runtime imports, checked against pyproject.toml.

`python -m kbqa.devtools.dependencies` (and tests/test_dependencies.py) reads every import
statement of the runtime packages (kbqa, ingest, storage, prompts; not tests/ or bench/),
maps each imported top-level module to the distribution that installs it
(`importlib.metadata.packages_distributions()`), and compares the result with
`[project] dependencies`: each distribution the runtime imports is a runtime dependency, and
each runtime dependency is imported. The exceptions, each with its reason, are the three
tables below and nowhere else.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path

from kbqa.devtools.layers import PACKAGES, imports

_OCR = "imported by rapidocr-onnxruntime (OCR), which is installed without its dependencies"

NEEDED_WITHOUT_IMPORT: dict[str, str] = {
    "gguf": "transformers reads the bundled SmolLM2 GGUF file with it (kbqa/llm/local_model.py)",
    "accelerate": "transformers' GGUF loading (the default LLM) needs it",
    "lxml": 'BeautifulSoup(…, "lxml") names its parser by a string (ingest/loaders/html.py)',
    "fastapi-offline": "the Swagger UI and ReDoc files served from its folder (server/api_docs.py)",
    "python-multipart": "FastAPI imports it to parse uploads (POST /v1/kbs/{kb}/documents)",
    "opencv-python-headless": _OCR,
    "pyclipper": _OCR,
    "shapely": _OCR,
    "pyyaml": _OCR,
}
"""Runtime dependencies no import statement of the runtime names, and why the runtime needs
them. rapidocr-onnxruntime (OCR) is installed with --no-deps by scripts/setup.sh because it
declares the GUI build of OpenCV; pyproject carries what it imports, headless."""

OPTIONAL_IMPORTS: dict[str, tuple[str, str]] = {
    "pymilvus": ("milvus", "pymilvus"),
    "milvus_lite": ("milvus", "milvus-lite"),
    "grpc": ("milvus", "pymilvus"),
    "psycopg": ("postgres", "psycopg"),
    "psycopg_pool": ("postgres", "psycopg-pool"),
    "langchain_openai": ("openai", "langchain-openai"),
    "openai": ("openai", "openai"),
    "unstructured": ("unstructured", "unstructured"),
    "pypandoc": ("unstructured", "unstructured"),
    "spacy": ("unstructured", "unstructured"),
}
"""Modules imported only where an optional feature is used (inside the function that needs
it, failing with an error that names the extra): module -> (extra, the requirement of that
extra that installs it)."""

UNDECLARED_IMPORTS: dict[str, str] = {
    "triton": "GPU kernels: comes with torch's CUDA wheels; looked up with find_spec first",
    "rapidocr_onnxruntime": "OCR models: scripts/setup.sh installs it with --no-deps",
}
"""Modules the runtime imports that no pyproject requirement installs, and why."""


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): `tomli_w` == `tomli-w`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: Iterable[str]) -> set[str]:
    """`psycopg[binary]>=3.2` -> `psycopg` (names only, canonical)."""
    names = set()
    for requirement in requirements:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        if match:
            names.add(canonical(match.group(1)))
    return names


def runtime_imports(root: Path) -> dict[str, list[str]]:
    """Top-level third-party modules the runtime packages import -> the files importing them."""
    found: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for _, module in imports(root, path):
                top = module.split(".")[0]
                if top in PACKAGES or top in sys.stdlib_module_names or top == "__future__":
                    continue
                files = found.setdefault(top, [])
                shown = str(path.relative_to(root))
                if shown not in files:
                    files.append(shown)
    return found


def check(root: Path) -> list[str]:
    """Each disagreement between pyproject.toml and the runtime's imports, one line each."""
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = requirement_names(project["dependencies"])
    extras = {
        name: requirement_names(reqs) for name, reqs in project["optional-dependencies"].items()
    }
    providers = _providers()
    problems: list[str] = []
    used: set[str] = set()
    for module, files in sorted(runtime_imports(root).items()):
        where = f"{module} (imported by {files[0]})"
        if module in UNDECLARED_IMPORTS:
            continue
        if module in OPTIONAL_IMPORTS:
            extra, via = OPTIONAL_IMPORTS[module]
            if canonical(via) not in extras.get(extra, set()):
                problems.append(f"{where}: the {extra!r} extra does not list {via}")
            continue
        distributions = {canonical(d) for d in providers.get(module, [])}
        if not distributions:
            problems.append(f"{where}: not installed here, so its distribution is unknown")
        elif not distributions & declared:
            names = ", ".join(sorted(distributions))
            problems.append(f"{where}: {names} is not a runtime dependency")
        used |= distributions
    for name in sorted(declared - used - set(NEEDED_WITHOUT_IMPORT)):
        problems.append(
            f"{name}: a runtime dependency the runtime never imports (move it to the extra "
            "that uses it, or give the reason in NEEDED_WITHOUT_IMPORT)"
        )
    return problems


@cache
def _providers() -> Mapping[str, list[str]]:
    """Top-level module -> distributions installing it (reads every installed one: cached)."""
    return importlib.metadata.packages_distributions()


def main() -> int:
    problems = check(Path(__file__).resolve().parents[2])
    for problem in problems:
        sys.stdout.write(f"{problem}\n")
    if not problems:
        sys.stdout.write("runtime dependencies are what the runtime imports\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
