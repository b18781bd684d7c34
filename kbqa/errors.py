"""Errors the answering path raises on purpose. Every message is one line meant for the user.

Each class says how a front end reports it: `exit_code` for the CLI (2 = usage or
configuration error, see docs/cli.md), `http_status` and `code` for the HTTP server's
`{"error": {"code", "message"}}` (docs/http-api.md).
"""

from __future__ import annotations


class KBQAError(Exception):
    """Base of the answering path's deliberate errors."""

    exit_code = 1
    http_status = 500
    code = "internal_error"


class UsageError(KBQAError):
    """The request itself is wrong: empty question, malformed history, bad KB name, …"""

    exit_code = 2
    http_status = 422
    code = "invalid_request"


class NotFound(UsageError):
    """A named thing (a knowledge base) does not exist."""

    http_status = 404
    code = "not_found"


class InputTooLong(UsageError):
    """The question (with the prompt around it) does not fit the model's context window."""

    http_status = 413
    code = "input_too_long"


class ConfigError(KBQAError):
    """A configured component cannot be used: a model that will not load, a missing extra."""

    exit_code = 2
    http_status = 503
    code = "unavailable"
