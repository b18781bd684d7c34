#!/usr/bin/env bash
# Set up, ingest the sample folder into a fresh home and answer a question from it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 KBQA_HOME=${KBQA_HOME:-$PWD/.kbqa-home}
.venv/bin/kbqa ingest samples
.venv/bin/kbqa ask "${1:-How much GPU memory does the INT4 version of Aurora need?}"
