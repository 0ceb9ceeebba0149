#!/usr/bin/env bash
# Quick pre-commit check: formatting and clippy as CI runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vamp-rs/target}"
cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings
