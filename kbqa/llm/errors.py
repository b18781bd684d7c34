"""Errors shared by the LLM adapters."""

from __future__ import annotations


class LLMUnavailable(RuntimeError):
    """A configured LLM cannot be used (bad path, missing CUDA, busy model); one-line message."""
