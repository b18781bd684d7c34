"""Prompt templates, shipped as data files inside the wheel.

    qa_<lang>.txt          the answer prompt: {context} (the numbered passages), {question}
    condense_<lang>.txt    rewrites a follow-up into a standalone question: {history}, {question}
    no_context_<lang>.txt  the label put before a plain chat answer when the KB has nothing
    extract_<lang>.txt     the label put before sentences quoted from the documents as the answer

`lang` is "zh" or "en". Placeholders are replaced literally (no str.format), so a user's own
template may contain other braces freely.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

LANGUAGES = ("zh", "en")
PLACEHOLDERS = {
    "qa": ("{context}", "{question}"),
    "condense": ("{history}", "{question}"),
    "no_context": (),
    "extract": (),
}


class TemplateError(ValueError):
    """A template cannot be used; the message is one line for the user."""


def load_template(lang: str, override_path: str = "", name: str = "qa") -> str:
    """The `name` template for `lang`: the file at `override_path` if given, else the bundled one.

    A user's template must contain the placeholders its kind needs (see the module docstring).
    """
    if lang not in LANGUAGES:
        raise TemplateError(f"no templates for language {lang!r} (have: {', '.join(LANGUAGES)})")
    if name not in PLACEHOLDERS:
        raise TemplateError(f"no template named {name!r}")
    if not override_path:
        return files(__name__).joinpath(f"{name}_{lang}.txt").read_text(encoding="utf-8")
    path = Path(override_path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TemplateError(f"cannot read prompt template {path}: {e}") from None
    missing = [p for p in PLACEHOLDERS[name] if p not in text]
    if missing:
        raise TemplateError(f"prompt template {path} lacks {' and '.join(missing)}")
    return text


def fill(template: str, **values: str) -> str:
    """`template` with each `{key}` replaced by its value, in one pass (values stay literal)."""
    out = template
    # Replace via unique markers first, so a value containing "{question}" is not re-filled.
    markers = {key: f"\x00{i}\x00" for i, key in enumerate(values)}
    for key, marker in markers.items():
        out = out.replace("{" + key + "}", marker)
    for key, marker in markers.items():
        out = out.replace(marker, values[key])
    return out
