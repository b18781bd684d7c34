"""The embedding model's forward pass on ONNX Runtime with int8 weights, for CPU ingestion.

Measured on the 2-core AMD EPYC (AVX-512 VNNI) with all-MiniLM-L6-v2 on real chunks: PyTorch
fp32 embeds ~11 chunks per CPU-second, ONNX Runtime fp32 the same, ONNX Runtime with dynamically
quantised int8 weights ~25 (bench/ingest_throughput.py). Int8 vectors are not bit-equal to
PyTorch's (cosine 0.987–1.0, mean 0.992 on real English and Chinese chunks), so vectors of
either backend go into the same index: bench/RESULTS.md records hit@5 with every mix of the two.

The model is exported from the weights already loaded (nothing is downloaded), once per model,
and cached under `<cache>/models/embeddings/` by a checksum of those weights and of the export
recipe; a cached file is checked against its own checksum before use. Every session is checked
against PyTorch on probe texts before it is used, so a bad export is never silently in charge.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kbqa.storage.types import Vectors

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger("kbqa.embedding")

RECIPE = "st-onnx-opset17-eager-int8-perchannel-v1"
"""Names how the cached file was made; a change to export() changes it, so old files are
rebuilt rather than reused."""

MIN_COSINE = 0.97
"""A session whose vectors for the probe texts fall below this cosine to PyTorch's is refused.
Int8 measured ≥ 0.987 on real chunks; a wrong export (lost pooling, bad mask) gives far less."""

PROBES = (
    "How long are backups kept before they are deleted?",
    "公司的年假有多少天？新员工入职满一年后可以申请。",
    "kbqa ingest ./docs --kb notes: 从文件夹导入文档, then ask questions about them.",
    "word " * 300,  # longer than the model's window: truncation must match
)


class OnnxUnavailable(RuntimeError):
    """ONNX Runtime cannot serve this model; the message says why in one line."""


Forward = Callable[[list[str]], Vectors]
"""[n] texts → [n, dim] float32 rows (not yet normalised)."""


def onnx_forward(
    model: SentenceTransformer, source: str, cache_dir: Path, *, threads: int = 0
) -> Forward:
    """The forward pass of `model` (loaded from `source`) on ONNX Runtime, int8.

    Raises OnnxUnavailable when the packages are missing, the export fails, or the session's
    vectors do not match PyTorch's on the probe texts.
    """
    try:
        import onnxruntime  # noqa: F401  (its absence is the common failure: say so first)
    except ImportError as e:
        raise OnnxUnavailable("the onnxruntime package is not installed") from e
    path = cached_model(model, source, cache_dir)
    session = _session(path, threads or _usable_cores())
    names = [i.name for i in session.get_inputs()]

    def forward(texts: list[str]) -> Vectors:
        features = model.preprocess(texts)
        feeds = {name: np.asarray(features[name], dtype=np.int64) for name in names}
        (vectors,) = session.run(None, feeds)  # [n, dim]
        return np.asarray(vectors, dtype=np.float32)

    _check(forward, model)
    return forward


def cached_model(model: SentenceTransformer, source: str, cache_dir: Path) -> Path:
    """The int8 ONNX file for `model`, exported into `cache_dir/models/embeddings/` (beside the
    bundled LLM's converted copy) if not there."""
    folder = cache_dir / "models" / "embeddings"
    key = weights_checksum(model)
    path = folder / f"{key}.onnx"
    stamp = folder / f"{key}.json"
    if path.is_file() and stamp.is_file() and _file_matches(path, stamp):
        return path
    folder.mkdir(parents=True, exist_ok=True)
    log.info("embedding: exporting %s to ONNX (int8) once, into %s", source, folder)
    # Written beside the target and renamed: two processes exporting at once each finish a
    # whole file, and a killed export leaves no half file under the final name.
    with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as work:
        built = export(source, Path(work))
        digest = _sha256(built)
        os.replace(built, path)
        tmp_stamp = Path(work) / "stamp.json"
        tmp_stamp.write_text(json.dumps({"sha256": digest, "recipe": RECIPE, "source": source}))
        os.replace(tmp_stamp, stamp)
    return path


def weights_checksum(model: SentenceTransformer) -> str:
    """sha256 over the recipe and every parameter's name, shape and bytes (~0.2 s for MiniLM):
    the same weights give the same file whatever directory they were loaded from."""
    digest = hashlib.sha256(RECIPE.encode())
    for name, tensor in model.state_dict().items():
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:32]


def export(source: str, work: Path) -> Path:
    """Export the sentence-transformers model at `source` (token ids → sentence embedding,
    pooling included) and quantise its weights to int8; returns the int8 file in `work`."""
    try:
        import torch
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise OnnxUnavailable(f"cannot export to ONNX: {e}") from e
    try:
        import onnx  # noqa: F401  (torch.onnx.export and the quantiser both need it)
    except ImportError as e:
        raise OnnxUnavailable("the onnx package is not installed (needed to export)") from e
    # Eager attention exports to plain MatMul/Softmax: ~17 % faster under ONNX Runtime than
    # the SDPA path's mask handling (Where/IsNaN over [B, H, S, S]); the weights are the same.
    model = SentenceTransformer(
        source, device="cpu", model_kwargs={"attn_implementation": "eager"}
    ).eval()
    sample = model.preprocess(list(PROBES[:2]))
    names = [k for k, v in sample.items() if isinstance(v, torch.Tensor)]
    constants = {k: v for k, v in sample.items() if not isinstance(v, torch.Tensor)}

    class Sentence(torch.nn.Module):
        """Token tensors in, `sentence_embedding` out: the model's own pooling, traced."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            features: dict[str, Any] = dict(zip(names, tensors, strict=True)) | constants
            return self.model(features)["sentence_embedding"]

    fp32 = work / "fp32.onnx"
    int8 = work / "int8.onnx"
    axes = {name: {0: "batch", 1: "tokens"} for name in names}
    try:
        # The tracer warns of every shape test it freezes; the check against PyTorch on probes
        # of other lengths (_check) is what tells whether the frozen graph holds.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Sentence(),
                tuple(sample[name] for name in names),
                str(fp32),
                input_names=names,
                output_names=["sentence_embedding"],
                dynamic_axes={**axes, "sentence_embedding": {0: "batch"}},
                opset_version=17,
                dynamo=False,  # the TorchScript exporter: the dynamo one needs onnxscript
            )
        # Per-channel weights: per-tensor scales lost too much (cosine down to 0.81 on real
        # chunks), per-channel keeps ≥ 0.987 at the same speed.
        quiet = logging.getLogger()
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # the quantiser logs advice on the root logger
        try:
            quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=True)
        finally:
            quiet.setLevel(level)
    except Exception as e:  # the exporters raise many types; the caller falls back to PyTorch
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise OnnxUnavailable(f"ONNX export failed: {reason}") from e
    return int8


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the session's notes are not the user's
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # a corrupt or incompatible file
        raise OnnxUnavailable(f"ONNX Runtime cannot load {path.name}: {e}") from e


def _check(forward: Forward, model: SentenceTransformer) -> None:
    """Refuse a session whose probe vectors are not PyTorch's (cosine below MIN_COSINE)."""
    texts = list(PROBES)
    expected = model.encode(
        texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    got = forward(texts)
    got = got / np.maximum(np.linalg.norm(got, axis=1, keepdims=True), 1e-12)
    worst = float(np.min(np.sum(got * expected, axis=1)))
    if not worst >= MIN_COSINE:  # NaN fails too
        raise OnnxUnavailable(f"ONNX vectors differ from PyTorch's (cosine {worst:.3f})")


def _usable_cores() -> int:
    """Cores this process may run on (a container's or taskset's share, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_matches(path: Path, stamp: Path) -> bool:
    """The cached file is whole and the one its stamp names (else it is exported again)."""
    try:
        recorded = json.loads(stamp.read_text())
        return bool(recorded.get("recipe") == RECIPE and recorded.get("sha256") == _sha256(path))
    except (OSError, ValueError, AttributeError):
        return False
