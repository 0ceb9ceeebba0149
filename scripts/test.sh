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
command -v redis-server >/dev/null 2>&1 || need_packages+=(redis-server)
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

# Servers for the integration tests: each on loopback, on a free port, in a temporary
# directory; only the processes started here are stopped on exit.
SERVERS_DIR="$(mktemp -d -t vamp-servers.XXXXXX)"
started_pids=()
cleanup() {
  for pid in "${started_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$SERVERS_DIR"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

if command -v redis-server >/dev/null 2>&1; then
  step "starting redis-server"
  redis_port="$(free_port)"
  mkdir -p "$SERVERS_DIR/redis"
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$SERVERS_DIR/redis" \
    --logfile "$SERVERS_DIR/redis/redis.log" >/dev/null 2>&1 &
  started_pids+=($!)
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  export VAMP_REDIS_URL="redis://127.0.0.1:$redis_port/0"
  echo "redis-server on $VAMP_REDIS_URL"
fi

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

step "each vamp-backends feature builds alone, and none builds a backend SDK by default"
cargo check -p vamp-backends --no-default-features --quiet
if cargo tree -p vamp-backends -e normal --no-default-features --prefix none | grep -E '^(redis|etcd-client|sqlx|tiberius|zookeeper-client) '; then
  echo "vamp-backends without features must not build backend SDKs" >&2
  exit 1
fi
for feature in kv-redis; do
  cargo check -p vamp-backends --no-default-features --features "$feature" --quiet
done

step "cargo test --workspace"
cargo test --workspace --all-features 2>&1 | tee "${CARGO_TARGET_DIR}/test.log"

step "vamp validate on the shipped example"
cargo run --quiet --example vamp -- validate examples/blueprints/sava.yml

step "summary"
awk '/^test result:/ { split($0, a, /[ ;.]+/); for (i = 1; i < length(a); i++) { if (a[i+1] == "passed") p += a[i]; if (a[i+1] == "failed") f += a[i]; if (a[i+1] == "ignored") s += a[i] } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "${CARGO_TARGET_DIR}/test.log"
