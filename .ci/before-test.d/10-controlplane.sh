#!/usr/bin/env bash
# Build the test control plane, or reuse it from $BECO_CACHE (cold: see docs/testing.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export CACHE="${CACHE:-${BECO_CACHE:-$HOME/.cache/beco}}"
time make controlplane
