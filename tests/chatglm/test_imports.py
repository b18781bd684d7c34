"""kbqa/chatglm/ imports one way (the model at the bottom; loading, quantization, generation
and the engines above it) and stays importable with torch, sentencepiece and safetensors."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PACKAGE = Path(__file__).parent.parent.parent / "kbqa" / "chatglm"
# The Triton kernels: imported (lazily) only where they run, see triton_use.py.
KERNEL_MODULES = {"kernels", "attn_kernels", "batched_kernels"}


def _modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def _imports_of(module: str) -> set[str]:
    """The package's modules that `module` imports anywhere in its source (lazy imports
    inside functions and TYPE_CHECKING blocks included: they are still a dependency)."""
    names = set(_modules())
    found: set[str] = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "kbqa.chatglm":  # from kbqa.chatglm import kernels
                found |= {alias.name for alias in node.names if alias.name in names}
            elif node.module.startswith("kbqa.chatglm."):
                found.add(node.module.removeprefix("kbqa.chatglm.").split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("kbqa.chatglm."):
                    found.add(alias.name.removeprefix("kbqa.chatglm.").split(".")[0])
    return found - {module}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of graph (module → the modules it imports) as a path, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_the_package() -> None:
    graph = {module: _imports_of(module) for module in _modules()}
    assert _cycle(graph) is None, " → ".join(_cycle(graph) or [])
    # The model is at the bottom: it imports only the config.
    assert graph["model"] == {"config"}


@pytest.mark.parametrize("module", _modules())
def test_every_module_imports(module: str) -> None:
    if module in KERNEL_MODULES and importlib.util.find_spec("triton") is None:
        pytest.skip("needs triton")
    importlib.import_module(f"kbqa.chatglm.{module}")


def test_imports_need_nothing_but_torch_sentencepiece_and_safetensors() -> None:
    # GPU benchmark hosts may lack numpy and transformers; and CPU users lack triton.
    blocked = ("numpy", "transformers", "langchain_core", "triton")
    modules = [m for m in _modules() if m not in KERNEL_MODULES]
    code = (
        f"import importlib, sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        f"for name in {modules!r}: importlib.import_module('kbqa.chatglm.' + name)\n"
        "from kbqa.chatglm import ChatGLM2\n"
        "m = ChatGLM2.from_config({'num_layers': 1, 'padded_vocab_size': 50, 'hidden_size': 32,"
        " 'num_attention_heads': 2, 'kv_channels': 16, 'ffn_hidden_size': 32}, quantize='int4')\n"
        "print(len(list(m.generate([1, 2], max_new_tokens=3, temperature=0, eos_token_ids=[]))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PACKAGE.parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3"


@pytest.mark.parametrize("switched_off", [False, True])
def test_one_switch_decides_where_the_kernels_run(
    monkeypatch: pytest.MonkeyPatch, switched_off: bool
) -> None:
    """triton_use.py decides for single-stream generate and the batching engine alike (one
    fast forward): KBQA_NO_TRITON=1 turns the kernels off, even where they could run (here:
    under the interpreter)."""
    from kbqa.chatglm import ChatGLM2, fused, triton_use

    if importlib.util.find_spec("triton") is None:
        pytest.skip("needs triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if switched_off:
        monkeypatch.setenv("KBQA_NO_TRITON", "1")
    triton_use.triton_installed.cache_clear()
    try:
        model = ChatGLM2.from_config("tiny", dtype=torch.float32)
        assert (fused.triton_for(torch.zeros(1)) is None) == switched_off
        assert triton_use.kernels_run_on(model.device) == (not switched_off)
    finally:
        monkeypatch.undo()
        triton_use.triton_installed.cache_clear()
    assert fused.triton_for(torch.zeros(1)) is None  # CPU tensors, not interpreted
