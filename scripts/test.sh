#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit, conformance and doc tests, and the
# dependency-hygiene checks. This is the README's test command and what CI runs.
#
# Integration servers (HAProxy, etcd, ZooKeeper, Redis, PostgreSQL, MariaDB) are installed and
# started here as the backend issues land; with CI=true or VAMP_TEST_INTEGRATION=1 a missing
# server is a failure, not a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

# Reuse a target directory outside the clone so CI's fresh clones build incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vamp-rs/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

# Debian packages the integration tests need; installed when missing (as root).
need_packages=()
command -v haproxy >/dev/null 2>&1 || need_packages+=(haproxy)
if ((${#need_packages[@]})); then
  step "installing ${need_packages[*]}"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_packages[@]}" >/dev/null
  else
    echo "missing: ${need_packages[*]} (install them with: sudo apt-get install ${need_packages[*]})" >&2
  fi
fi
# In CI every integration test must run; a missing server fails it.
export VAMP_TEST_INTEGRATION="${VAMP_TEST_INTEGRATION:-${CI:+1}}"

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (all targets, all features, -D warnings)"
cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings

step "cargo doc (warnings denied: broken intra-doc links fail)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps --quiet

step "vamp-core has no runtime, HTTP or backend SDK in its normal dependencies"
if cargo tree -p vamp-core -e normal --prefix none | grep -E '^(tokio|reqwest|hyper|async-std|etcd-client|sqlx|redis|kube) '; then
  echo "vamp-core must not depend on the crates above" >&2
  exit 1
fi

step "cargo test --workspace"
cargo test --workspace --all-features 2>&1 | tee "${CARGO_TARGET_DIR}/test.log"

step "vamp validate on the shipped example"
cargo run --quiet --example vamp -- validate examples/blueprints/sava.yml

step "summary"
awk '/^test result:/ { split($0, a, /[ ;.]+/); for (i = 1; i < length(a); i++) { if (a[i+1] == "passed") p += a[i]; if (a[i+1] == "failed") f += a[i]; if (a[i+1] == "ignored") s += a[i] } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "${CARGO_TARGET_DIR}/test.log"
