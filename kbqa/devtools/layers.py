"""The allowed import directions between kbqa's packages, checked on the real import statements.

`python -m kbqa.devtools.layers` (and tests/test_layers.py) reads every `import` and
`from … import` of the source tree with `ast`, those inside functions included, and reports each
one that points the wrong way. LAYERS below is the one table of the layers (docs/architecture.md
draws it): a module may import modules of the layers below its own, and of its own layer,
except in the foundations, where a package imports only the peers PEERS names.

Units are module-name prefixes (`kbqa.server` covers `kbqa.server.app`); the longest prefix
that matches a module decides its unit. The folders ingest/, storage/ and prompts/
are read under their import names, kbqa.ingest … (IMPORT_NAMES).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Developer tools: may import anything; nothing imports them.
    ("tools", ("kbqa.devtools", "kbqa.settings_doc")),
    # What users run. They may use each other (`kbqa serve` starts the server, which mounts
    # the MCP server); nothing else imports them.
    ("front ends", ("kbqa.cli", "kbqa.server", "kbqa.mcp_server")),
    # From a question to an answer with sources and evidence; evaluation and fine-tuning data
    # run that same path.
    (
        "answering",
        (
            "kbqa.chain",
            "kbqa.prompting",
            "kbqa.evidence",
            "kbqa.answer_mode",
            "kbqa.answer",
            "kbqa.neighbours",
            "kbqa.evaluation",
            "kbqa.finetune",
            "kbqa.finetune_data",
            "kbqa.finetune_eval",
        ),
    ),
    # One job each, over storage and the models: chat models, search (with its relevance
    # score, which the chain's gate and evidence reuse), KB administration, API keys.
    (
        "services",
        (
            "kbqa.llm",
            "kbqa.retrieval",
            "kbqa.rerank",
            "kbqa.relevance",
            "kbqa.named_documents",
            "kbqa.question_names",
            "kbqa.value_kinds",
            "kbqa.sentences",  # relevance reads passages by sentence, evidence quotes them
            "kbqa.stemming",  # one stemmer for relevance and evidence
            "kbqa.kb_admin",
            "kbqa.keys",
        ),
    ),
    # The settings tree and the error types every kbqa layer shares.
    ("shared", ("kbqa.settings", "kbqa.errors", "kbqa.jsonlines")),
    # Know nothing of kbqa's application code. `kbqa` itself is the namespace package's own
    # __init__ (it imports nothing); a kbqa module missing from the rows above falls here too,
    # so it may import nothing until it is given its layer.
    ("foundations", ("kbqa.ingest", "kbqa.storage", "kbqa.prompts", "kbqa.chatglm", "kbqa")),
)

ISOLATED = "foundations"
"""The layer whose packages import one another only as PEERS allows."""

PEERS: dict[str, tuple[str, ...]] = {
    "kbqa.ingest": ("kbqa.storage",),  # the pipeline writes what it reads into a KB
}

PACKAGES: tuple[str, ...] = ("kbqa", "ingest", "storage", "prompts")
"""The repository folders whose source is checked."""

IMPORT_NAMES: dict[str, str] = {
    "kbqa": "kbqa",
    "ingest": "kbqa.ingest",
    "storage": "kbqa.storage",
    "prompts": "kbqa.prompts",
}
"""Each folder's import name. ingest/, storage/ and prompts/ are installed as subpackages of
kbqa (and linked under kbqa/ in the repository; the walk does not follow links, so each file is
read once, under its import name)."""


@dataclass(frozen=True)
class Violation:
    path: Path
    line: int
    importer: str
    imported: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.imported}: {self.reason}"


def unit_of(module: str) -> tuple[str, int] | None:
    """The unit (longest matching prefix) and layer index of `module`; None outside LAYERS."""
    best: tuple[str, int] | None = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and (best is None or len(prefix) > len(best[0])):
                best = (prefix, index)
    return best


def allowed(importer: str, imported: str) -> str | None:
    """None if `importer` may import `imported`, else why not (one line)."""
    source, target = unit_of(importer), unit_of(imported)
    if source is None or target is None or source[0] == target[0]:
        return None  # outside the checked packages, or within one unit
    (unit, layer), (other, other_layer) = source, target
    name, target_name = LAYERS[layer][0], LAYERS[other_layer][0]
    if other_layer > layer:
        return None
    if other_layer < layer:
        return f"{unit} ({name}) may not import {other} ({target_name}, a layer above)"
    if name == ISOLATED and other not in PEERS.get(unit, ()):
        return f"{unit} may not import {other}: {ISOLATED} import only the peers PEERS lists"
    return None


def module_name(root: Path, path: Path) -> str:
    """`kbqa/server/app.py` -> `kbqa.server.app`, `storage/kb.py` -> `kbqa.storage.kb`; a
    package's __init__ is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    parts[:1] = IMPORT_NAMES.get(parts[0], parts[0]).split(".")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(root: Path, path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) for each import in `path`, at any depth of the file.

    `from kbqa import settings` names the submodule `kbqa.settings` where that file exists;
    relative imports are resolved against the importing module's package.
    """
    module = module_name(root, path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from kbqa.storage.keyword import a, b` is one import of kbqa.storage.keyword.
            named = {f"{base}.{alias.name}" for alias in node.names}
            for target in sorted({m if _exists(root, m) else base for m in named}):
                yield node.lineno, target


def _source_path(root: Path, module: str) -> Path:
    """Where `module` lies under `root`, less its suffix: `kbqa.storage.kb` -> storage/kb."""
    parts = module.split(".")
    for folder, name in IMPORT_NAMES.items():
        prefix = name.split(".")
        if folder != name and parts[: len(prefix)] == prefix:
            return root.joinpath(folder, *parts[len(prefix) :])
    return root.joinpath(*parts)


def _exists(root: Path, module: str) -> bool:
    path = _source_path(root, module)
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def check(root: Path) -> list[Violation]:
    """Every import in the PACKAGES under `root` that LAYERS does not allow."""
    found: list[Violation] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            importer = module_name(root, path)
            for line, imported in imports(root, path):
                reason = allowed(importer, imported)
                if reason is not None:
                    shown = path.relative_to(root)
                    found.append(Violation(shown, line, importer, imported, reason))
    return found


def main() -> int:
    root = Path(__file__).resolve().parents[2]
    violations = check(root)
    for violation in violations:
        sys.stdout.write(f"{violation}\n")
    if violations:
        sys.stdout.write(
            f"{len(violations)} import(s) against the layers (kbqa/devtools/layers.py)\n"
        )
        return 1
    sys.stdout.write("imports follow the layers of kbqa/devtools/layers.py\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
