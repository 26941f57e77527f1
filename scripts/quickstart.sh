#!/usr/bin/env bash
# One command on a fresh machine: install dependencies, build, and run the main job — the
# offline throughput benchmark on the embedded synthetic model (no download needed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
build/qserve bench "$@"
