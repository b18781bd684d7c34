"""Scoped API keys (kbqa.keys), `kbqa keys`, and the per-address failure limit."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from kbqa.keys import KeyStore, KeyUsageError
from kbqa.server.ratelimit import FailureLimiter
from tests.cli_support import kbqa


def test_create_list_revoke_with_json(tmp_path: Path) -> None:
    code, out, _ = kbqa(tmp_path, "keys", "create", "--name", "ci", "--scope", "write", "--json")
    assert code == 0
    created = json.loads(out)
    assert set(created) == {"name", "key", "scope", "kbs"}
    assert created["name"] == "ci" and created["scope"] == "write" and created["kbs"] is None
    code, out, _ = kbqa(
        tmp_path, "keys", "create", "--name", "ro", "--kb", "ops", "--kb", "知识库", "--json"
    )
    assert code == 0
    limited = json.loads(out)
    assert limited["scope"] == "read" and limited["kbs"] == ["ops", "知识库"]

    code, out, _ = kbqa(tmp_path, "keys", "list", "--json")
    listed = {k["name"]: k for k in json.loads(out)["keys"]}
    assert listed.keys() == {"ci", "ro"}
    assert listed["ro"]["kbs"] == ["ops", "知识库"] and "key" not in listed["ro"]

    # Only digests are stored, readable by the owner alone.
    stored = (tmp_path / "keys.json").read_text(encoding="utf-8")
    assert created["key"] not in stored and limited["key"] not in stored
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600

    store = KeyStore(tmp_path)
    access = store.authenticate(limited["key"])
    assert access is not None and access.scope == "read"
    assert access.sees("ops") and not access.sees("hr")
    assert store.authenticate(created["key"] + "x") is None

    code, out, _ = kbqa(tmp_path, "keys", "revoke", "ro", "--json")
    assert code == 0 and json.loads(out) == {"revoked": "ro"}
    assert store.authenticate(limited["key"]) is None  # the store notices the file changed
    assert store.authenticate(created["key"]) is not None


def test_the_key_is_printed_once_on_stdout(tmp_path: Path) -> None:
    code, out, err = kbqa(tmp_path, "keys", "create", "--name", "laptop", "--scope", "admin")
    assert code == 0
    key = out.strip()
    assert key.startswith("kbqa_") and len(key) > 40
    assert "shown only this once" in err
    code, out, _ = kbqa(tmp_path, "keys", "list")
    assert "laptop" in out and key not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "dup"], "exists"),
        (["--name", "x", "--scope", "owner"], "unknown scope"),
        (["--name", "x", "--kb", "../etc"], "invalid knowledge base name"),
        (["--name", "x", "--kb", ".hidden"], "invalid knowledge base name"),
        (["--name", "bad name"], "invalid key name"),
        (["--name", ""], "invalid key name"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    assert kbqa(tmp_path, "keys", "create", "--name", "dup")[0] == 0
    before = (tmp_path / "keys.json").read_bytes()
    code, out, err = kbqa(tmp_path, "keys", "create", *args, "--json")
    assert code == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "keys.json").read_bytes() == before


def test_revoking_an_unknown_key_exits_2(tmp_path: Path) -> None:
    code, _, err = kbqa(tmp_path, "keys", "revoke", "nobody")
    assert code == 2 and "no key named 'nobody'" in err


def test_a_damaged_key_file_refuses_every_key(tmp_path: Path) -> None:
    (tmp_path / "keys.json").write_text('{"keys": [{"name": 1}]', encoding="utf-8")
    with pytest.raises(KeyUsageError, match="damaged"):
        KeyStore(tmp_path).authenticate("kbqa_anything")
    code, _, err = kbqa(tmp_path, "keys", "list")
    assert code == 2 and "damaged" in err


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failures_block_an_address_for_the_rest_of_the_window() -> None:
    clock = FakeClock()
    limiter = FailureLimiter(3, window_s=60, clock=clock)
    for _ in range(2):
        limiter.failed("10.0.0.1")
        clock.now += 10
    assert limiter.retry_after("10.0.0.1") is None
    limiter.failed("10.0.0.1")  # the third failure, at t=20
    assert limiter.retry_after("10.0.0.1") == 40  # the first one (t=0) ages out at t=60
    assert limiter.retry_after("10.0.0.2") is None  # per address
    clock.now += 40
    assert limiter.retry_after("10.0.0.1") is None
    clock.now += 100
    assert limiter.retry_after("10.0.0.1") is None
    assert not limiter._failures  # quiet addresses are forgotten
