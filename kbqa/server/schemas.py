"""Request and response bodies of every route (documented in docs/http-api.md), in one place.

Requests ignore fields they do not know (clients written for other servers send extras) but
check the types and ranges of those they do; a KB name is validated where it is parsed.
The JSON of kbqa.answer's Source, Evidence and Timings are SourceBody, EvidenceBody and
TimingsBody here, so that no two classes of kbqa share a name (tests/test_structure.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from kbqa.storage.errors import InvalidKBName
from kbqa.storage.names import validate_kb_name

MAX_KBS_PER_REQUEST = 16
MAX_HISTORY_TURNS = 100
MAX_TEXT_CHARS = 200_000
"""A question or message longer than this is never a real one; the chain refuses shorter ones
that do not fit the model's context with a 413 of its own."""


def _kb_name(value: str) -> str:
    try:
        return validate_kb_name(value)
    except InvalidKBName as e:
        raise ValueError(str(e)) from None


KbName = Annotated[
    str,
    AfterValidator(_kb_name),
    Field(
        description="1 to 64 letters or digits of any script, '_', '-', '.'; not starting with '.'",
        # The schema can only approximate "letters and digits of any script"; the server
        # applies the exact rule (kbqa.storage.names) and answers 422 to anything else.
        json_schema_extra={"pattern": r"^[\w-][\w.-]*$", "minLength": 1, "maxLength": 64},
    ),
]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
Question = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS, pattern=r"[^\s\x1c-\x1f]")]
"""Text that is not all white space, as Python's `str.strip` sees it (the chain strips)."""
Turn = Annotated[list[Text], Field(min_length=2, max_length=2, description="[question, answer]")]
History = Annotated[list[Turn], Field(max_length=MAX_HISTORY_TURNS, description="Oldest first")]
TopK = Annotated[int, Field(ge=1, le=100)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Open(BaseModel):
    """A response that passes on fields added by lower layers."""

    model_config = ConfigDict(extra="allow")


# -- /v1/ask ---------------------------------------------------------------------------------


class AskRequest(_Request):
    question: Question
    kb: KbName | Annotated[list[KbName], Field(min_length=1, max_length=MAX_KBS_PER_REQUEST)] = (
        "default"
    )
    top_k: TopK | None = None
    history: History = []
    stream: bool = False

    @property
    def kbs(self) -> list[str]:
        return [self.kb] if isinstance(self.kb, str) else list(dict.fromkeys(self.kb))


class EvidenceBody(BaseModel):
    """A span of a source's text that supports the answer or matches the question
    (kbqa.answer.Evidence)."""

    start: int = Field(description="Character offset into the source's `text` (a Python index)")
    end: int
    text: str = Field(description="Exactly `text[start:end]` of the source")
    score: float = Field(ge=0.0, le=1.0)
    basis: Literal["answer", "question"] = Field(
        description="`answer`: supports the answer; `question`: best matches the question "
        "(the answer had no support, or was itself quoted from the sources)"
    )


class SourceBody(_Open):
    """A chunk the answer was generated from; `index` is the number the answer cites it by
    (kbqa.answer.Source)."""

    index: int
    chunk_id: str
    doc_id: str
    source: str
    page: int | None = None
    heading: str | None = None
    text: str
    score: float
    evidence: list[EvidenceBody] | None = Field(
        default=None, description="Found once the answer is complete; absent before (SSE `sources`)"
    )


class TimingsBody(_Open):
    """How long the answer took (kbqa.answer.Timings)."""

    retrieval_ms: float | None = None
    first_token_ms: float | None = None
    total_ms: float | None = None
    tokens_per_s: float | None = None


class AskResponse(_Open):
    answer: str
    refused: bool
    sources: list[SourceBody]
    timings: TimingsBody
    evidence_basis: Literal["answer", "question"] | None = None
    answer_mode: Literal["generated", "extracted"] | None = Field(
        default=None, description="`extracted`: sentences quoted from the sources (null if refused)"
    )
    generated: str | None = Field(
        default=None, description="The model's answer, where the answer shown replaced it"
    )


# -- POST / (ChatGLM2 api.py) ----------------------------------------------------------------


class ChatGLMRequest(_Request):
    prompt: Question
    history: History | None = None
    max_length: Annotated[int, Field(ge=1)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=10.0)] | None = None


class ChatGLMResponse(BaseModel):
    response: str
    history: list[list[str]]
    status: int = 200
    time: str = Field(description="Local time of the answer, YYYY-mm-dd HH:MM:SS")


# -- OpenAI-compatible ------------------------------------------------------------------------


class ContentPart(_Request):
    type: str
    text: Text | None = None


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[ContentPart] | None = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type == "text")


class StreamOptions(_Request):
    include_usage: bool = False


class ChatCompletionRequest(_Request):
    model: Annotated[str, Field(min_length=1, max_length=200)]
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=2 * MAX_HISTORY_TURNS)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    stop: Text | Annotated[list[Text], Field(max_length=4)] | None = None
    n: Annotated[int, Field(ge=1, le=1, description="Only one choice is generated")] | None = None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] = "stop"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    sources: list[SourceBody] | None = Field(
        default=None, description="The chunks the answer was generated from (KB models only)"
    )


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    sources: list[SourceBody] | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "kbqa"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# -- knowledge bases, documents, jobs ---------------------------------------------------------


class KbInfo(_Open):
    name: str
    backend: str
    embedding: str
    documents: int
    chunks: int
    created_at: str
    min_relevance: float | None = None
    """The KB's refusal threshold: its calibrated one (`kbqa eval --calibrate`) or the default."""
    calibrated: bool = False
    error: str | None = None
    """Set when the KB is damaged and could not be read."""


class KbList(BaseModel):
    kbs: list[KbInfo]


class KbCreate(_Request):
    name: KbName
    embedding: Annotated[str, Field(min_length=1, max_length=500)] | None = None
    backend: Literal["faiss", "milvus"] | None = None


class KbDeleted(BaseModel):
    deleted: str


class SearchRequest(_Request):
    query: Question
    top_k: TopK = 5


class SearchResult(BaseModel):
    """One hit of `POST /v1/kbs/{kb}/search` (kbqa.storage.types.SearchHit, as JSON)."""

    chunk_id: str
    doc_id: str
    text: str
    source: str
    page: int | None
    heading: str | None
    score: float


class SearchResponse(BaseModel):
    query: str
    results: list[SearchResult]


class Document(BaseModel):
    doc_id: str
    source: str
    chunks: int


class DocumentList(BaseModel):
    documents: list[Document]


class DocumentRemoved(BaseModel):
    removed: str


class JobCreated(BaseModel):
    job_id: str


class FileFailure(BaseModel):
    path: str
    error: str
    error_code: str | None = None
    """Why the file failed: `too_large` (over a size, unpacked-size, compression-ratio, pixel
    or page limit), `parse_timeout`, `parse_memory`, `parse_crashed`, `load_failed` (empty,
    binary, corrupt, encrypted or textless)."""


class FileSkipped(BaseModel):
    path: str
    reason: str


class IngestResult(_Open):
    """The JSON of `kbqa ingest --json`."""

    kb: str
    added: int
    updated: int
    unchanged: int
    removed: int
    failed: list[FileFailure]
    skipped: list[FileSkipped]
    chunks: int
    seconds: float


class JobProgress(BaseModel):
    files_total: int
    files_done: int
    chunks: int
    pages_done: int = 0
    """Pages of paged files (PDF, multi-page TIFF) read so far, all files together."""
    current: str | None = None
    """While a paged file is read: "scan.pdf page 3/20" (OCR takes seconds a page)."""


class JobStatus(BaseModel):
    job_id: str
    kb: str
    kind: Literal["upload", "watch"] = "upload"
    """`upload`, or `watch`: a sync of a watched folder (`server.watch`; `files` holds it)."""
    state: Literal["queued", "running", "done", "failed"]
    files: list[str]
    progress: JobProgress
    result: IngestResult | None
    error: str | None
    error_code: str | None
    """Why it failed: `interrupted` (the server stopped; upload again), `job_timeout` (still
    running `server.job_timeout_s` after it started; nothing stored), `ingest_failed`, or
    the code an HTTP error of the same cause would carry (`kb_not_found`, …)."""


class JobList(BaseModel):
    jobs: list[JobStatus]
    """Newest first."""


# -- evaluation jobs ---------------------------------------------------------------------------


class EvalRequest(BaseModel):
    """`POST /v1/kbs/{kb}/eval`: the questions of `kbqa eval`'s file, as a list of objects."""

    model_config = ConfigDict(extra="forbid")
    questions: list[Any] = Field(min_length=1, max_length=10_000)
    """Objects {"question", "facts"?, "sources"?, "unanswerable"?, "history"?, "id"?}; an
    invalid one is reported in the result's `invalid_lines` by its 1-based position."""
    retrieval_only: bool = False
    calibrate: bool = False
    """Choose and store the KB's own min_relevance from these questions."""
    top_k: int | None = Field(default=None, ge=1, le=100)


class EvalJobProgress(BaseModel):
    questions_total: int
    questions_done: int


class EvalJobStatus(BaseModel):
    job_id: str
    kb: str
    kind: Literal["eval"] = "eval"
    state: Literal["queued", "running", "done", "failed"]
    progress: EvalJobProgress
    result: dict[str, Any] | None
    """`kbqa eval --json`'s object once done."""
    error: str | None
    error_code: str | None


# -- health -----------------------------------------------------------------------------------


class QueueStatus(BaseModel):
    running: int
    waiting: int
    concurrency: int
    queue_size: int


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    ready: bool = True
    """False while the model warms up (on a GPU: compiling kernels, capturing CUDA graphs;
    seconds at start-up). Questions asked meanwhile are accepted and wait for it."""
    queue: QueueStatus
    formats: list[str] = []
    """The file extensions uploads and ingests read here (the `unstructured` extra adds some)."""


# -- source viewer ----------------------------------------------------------------------------


class DocumentMeta(BaseModel):
    doc_id: str
    source: str
    path: str
    """The resolved absolute path the document was ingested from (its identity)."""
    chunks: int
    content_type: str
    """Of the original file, by its extension."""
    available: bool
    """Whether the original file is still there (`…/content` serves it)."""
    size: int | None
    """The original file's size in bytes now; null when it is not available."""
    modified: bool
    """The file changed since it was ingested: the chunks show the ingested version."""


class DocumentChunk(BaseModel):
    chunk_id: str
    position: int
    text: str
    page: int | None
    heading: str | None


class DocumentDetail(BaseModel):
    document: DocumentMeta
    chunks: list[DocumentChunk]
    """In reading order."""
