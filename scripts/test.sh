#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit, conformance and doc tests, and the
# dependency-hygiene checks. This is the README's test command and what CI runs.
#
# Integration servers (HAProxy, etcd, ZooKeeper, Redis, PostgreSQL, MariaDB) are installed and
# started here as the backend issues land; with CI=true or VAMP_TEST_INTEGRATION=1 a missing
# server is a failure, not a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

# One build for both README commands: outside CI, the clone's own target/ (where the first
# command, `cargo run --example canary_demo`, builds); in CI, a target directory outside the
# clone, so that fresh clones build incrementally. CARGO_TARGET_DIR overrides both.
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
  if [ -n "${CI:-}" ] && [ "${CI}" != false ]; then
    export CARGO_TARGET_DIR="$HOME/.cache/vamp-rs/target"
  else
    export CARGO_TARGET_DIR="$PWD/target"
  fi
fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

# Debian packages the integration tests need; installed when missing (as root).
need_packages=()
command -v haproxy >/dev/null 2>&1 || need_packages+=(haproxy)
command -v python3 >/dev/null 2>&1 || need_packages+=(python3)
# A virtual environment for osmem-server (the Elasticsearch API's stand-in, from PyPI).
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_packages+=(python3-venv)
command -v redis-server >/dev/null 2>&1 || need_packages+=(redis-server)
command -v etcd >/dev/null 2>&1 || need_packages+=(etcd-server)
[ -x /usr/share/zookeeper/bin/zkServer.sh ] || need_packages+=(zookeeperd)
command -v protoc >/dev/null 2>&1 || need_packages+=(protobuf-compiler)
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need_packages+=(mariadb-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_packages+=(postgresql)
# The Docker scheduler's test image is busybox's root file system (no image can be pulled).
[ -x /bin/busybox ] || need_packages+=(busybox-static)
# Prometheus, scraping a real HAProxy's exporter in the Prometheus store's test.
command -v prometheus >/dev/null 2>&1 || need_packages+=(prometheus)
# A Docker engine: the machine's own when one answers, else Debian's, started privately below.
if ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
  command -v dockerd >/dev/null 2>&1 || need_packages+=(docker.io)
fi
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
chmod 755 "$SERVERS_DIR"
started_pids=()
stop_commands=()
cleanup() {
  for cmd in "${stop_commands[@]}"; do sh -c "$cmd" >/dev/null 2>&1 || true; done
  for pid in "${started_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # Wait for them to exit: a server still writing its files made `rm -rf` fail (and with it
  # the whole run, after every test had passed).
  for pid in "${started_pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$SERVERS_DIR" || true
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

if command -v etcd >/dev/null 2>&1; then
  step "starting etcd"
  etcd_port="$(free_port)"
  etcd_peer="$(free_port)"
  etcd --name vamp-test --data-dir "$SERVERS_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "vamp-test=http://127.0.0.1:$etcd_peer" >"$SERVERS_DIR/etcd.log" 2>&1 &
  started_pids+=($!)
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$etcd_port") 2>/dev/null && break; sleep 0.1; done
  export VAMP_ETCD_ENDPOINTS="http://127.0.0.1:$etcd_port"
  echo "etcd on $VAMP_ETCD_ENDPOINTS"
fi

if [ -x /usr/share/zookeeper/bin/zkServer.sh ]; then
  step "starting ZooKeeper"
  zk_port="$(free_port)"
  zk_dir="$SERVERS_DIR/zookeeper"
  mkdir -p "$zk_dir/data"
  printf '%s\n' "tickTime=500" "dataDir=$zk_dir/data" "clientPort=$zk_port" "clientPortAddress=127.0.0.1" \
    "admin.enableServer=false" "4lw.commands.whitelist=ruok" "maxSessionTimeout=20000" >"$zk_dir/zoo.cfg"
  ZOOCFGDIR="$zk_dir" ZOO_LOG_DIR="$zk_dir" /usr/share/zookeeper/bin/zkServer.sh start-foreground "$zk_dir/zoo.cfg" \
    >"$zk_dir/out.log" 2>&1 &
  started_pids+=($!)
  for _ in $(seq 300); do
    [ "$(python3 -c "import socket; s = socket.create_connection(('127.0.0.1', $zk_port), 1); s.sendall(b'ruok'); print(s.recv(4).decode())" 2>/dev/null)" = imok ] && break
    sleep 0.1
  done
  export VAMP_ZOOKEEPER_SERVERS="127.0.0.1:$zk_port"
  echo "ZooKeeper on $VAMP_ZOOKEEPER_SERVERS"
fi

# PostgreSQL: a private cluster (initdb refuses to run as root, so as user postgres then).
pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
if [ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ]; then
  step "starting PostgreSQL ($pg_bin)"
  pg_port="$(free_port)"
  pg_dir="$SERVERS_DIR/postgres"
  mkdir -p "$pg_dir"
  as_pg=()
  if [ "$(id -u)" = 0 ]; then chown postgres "$pg_dir"; as_pg=(runuser -u postgres --); fi
  "${as_pg[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -A trust -U postgres >"$pg_dir/initdb.log" 2>&1
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -o "-p $pg_port -c listen_addresses=127.0.0.1 -k $pg_dir" \
    -l "$pg_dir/log" -w start >/dev/null
  pg_ctl_cmd="${as_pg[*]} $pg_bin/pg_ctl -D $pg_dir/data"
  stop_commands+=("$pg_ctl_cmd -m fast -w stop")
  export VAMP_POSTGRES_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
  # The restart tests stop and start the server process itself.
  export VAMP_POSTGRES_STOP="$pg_ctl_cmd -m fast -w stop >/dev/null"
  export VAMP_POSTGRES_START="$pg_ctl_cmd -o '-p $pg_port -c listen_addresses=127.0.0.1 -k $pg_dir' -l $pg_dir/log -w start >/dev/null"
  echo "PostgreSQL on $VAMP_POSTGRES_URL"
fi

# MariaDB: a private data directory and server; start.sh / stop.sh also serve the restart test.
mariadbd_bin="$(command -v mariadbd || echo /usr/sbin/mariadbd)"
if [ -x "$mariadbd_bin" ]; then
  step "starting MariaDB"
  my_port="$(free_port)"
  my_dir="$SERVERS_DIR/mariadb"
  mkdir -p "$my_dir"
  mariadb-install-db --no-defaults --datadir="$my_dir/data" --user="$(id -un)" \
    --auth-root-authentication-method=normal >"$my_dir/install.log" 2>&1
  cat >"$my_dir/start.sh" <<EOF
#!/bin/sh
setsid "$mariadbd_bin" --no-defaults --datadir="$my_dir/data" --socket="$my_dir/my.sock" --port=$my_port \\
  --bind-address=127.0.0.1 --user="$(id -un)" --pid-file="$my_dir/my.pid" --log-error="$my_dir/err.log" \\
  </dev/null >/dev/null 2>&1 &
for i in \$(seq 100); do mariadb-admin --no-defaults --socket="$my_dir/my.sock" -uroot ping >/dev/null 2>&1 && exit 0; sleep 0.1; done
echo "MariaDB did not start; see $my_dir/err.log" >&2; exit 1
EOF
  cat >"$my_dir/stop.sh" <<EOF
#!/bin/sh
pid=\$(cat "$my_dir/my.pid" 2>/dev/null) || exit 0
kill "\$pid" 2>/dev/null
for i in \$(seq 300); do kill -0 "\$pid" 2>/dev/null || exit 0; sleep 0.1; done
kill -9 "\$pid" 2>/dev/null; exit 0
EOF
  chmod +x "$my_dir/start.sh" "$my_dir/stop.sh"
  "$my_dir/start.sh"
  stop_commands+=("$my_dir/stop.sh")
  mariadb --no-defaults --socket="$my_dir/my.sock" -uroot -e 'CREATE DATABASE IF NOT EXISTS vamp'
  export VAMP_MYSQL_URL="mysql://root@127.0.0.1:$my_port/vamp"
  export VAMP_MYSQL_STOP="$my_dir/stop.sh"
  export VAMP_MYSQL_START="$my_dir/start.sh"
  echo "MariaDB on $VAMP_MYSQL_URL"
fi

# Elasticsearch's HTTP API: no Elasticsearch or OpenSearch can be installed on this project's
# machines, so osmem-server (PyPI, an in-memory server speaking that API) stands in, installed in
# a virtual environment of its own (not the system Python). The end-to-end test starts its own
# copy too (VAMP_OSMEM_SERVER), to stop and restart it.
osmem_venv="${VAMP_OSMEM_VENV:-$HOME/.cache/vamp-rs/osmem-venv}"
osmem_version=0.1.6
# pip's output is captured first: `grep -q` ends at the first match, and with pipefail pip's
# SIGPIPE would fail the test (and reinstall on every run).
osmem_installed="$("$osmem_venv/bin/pip" show osmem-server 2>/dev/null || true)"
if ! grep -qx "Version: $osmem_version" <<<"$osmem_installed"; then
  step "installing osmem-server $osmem_version (PyPI) in $osmem_venv"
  python3 -m venv "$osmem_venv" && "$osmem_venv/bin/pip" install -q "osmem-server==$osmem_version" || true
fi
osmem_bin="$("$osmem_venv/bin/python" -c 'import os, osmem_server; print(os.path.join(os.path.dirname(osmem_server.__file__), "bin", "osmem-server"))' 2>/dev/null || true)"
if [ -n "$osmem_bin" ] && [ -x "$osmem_bin" ]; then
  step "starting osmem-server (Elasticsearch's HTTP API)"
  es_port="$(free_port)"
  "$osmem_bin" -addr "127.0.0.1:$es_port" -no-stdin-watch >"$SERVERS_DIR/osmem.log" 2>&1 &
  started_pids+=($!)
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$es_port") 2>/dev/null && break; sleep 0.1; done
  export VAMP_ELASTICSEARCH_URL="http://127.0.0.1:$es_port"
  export VAMP_OSMEM_SERVER="$osmem_bin"
  echo "osmem-server $osmem_version on $VAMP_ELASTICSEARCH_URL"
fi

# Prometheus: the test starts its own (its scrape targets are the test's ports).
if command -v prometheus >/dev/null 2>&1; then
  export VAMP_PROMETHEUS_BIN="$(command -v prometheus)"
  echo "Prometheus $("$VAMP_PROMETHEUS_BIN" --version 2>&1 | head -n 1 | awk '{print $3}') at $VAMP_PROMETHEUS_BIN"
fi

# Docker: the machine's engine (DOCKER_HOST or the default socket) when it answers; otherwise
# a private dockerd (own data root, exec root and socket), stopped on exit. Without iptables it
# runs with --iptables=false --bridge=none, and the tests use host networking.
if docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
  echo "Docker engine $(docker version --format '{{.Server.Version}}') at ${DOCKER_HOST:-the default socket}"
elif command -v dockerd >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  step "starting a private dockerd"
  dk_dir="$SERVERS_DIR/docker"
  mkdir -p "$dk_dir"
  dk_flags=()
  command -v iptables >/dev/null 2>&1 && iptables -L >/dev/null 2>&1 || {
    dk_flags=(--iptables=false --bridge=none)
    export VAMP_TEST_DOCKER_NETWORK=host
  }
  dockerd --host "unix://$dk_dir/docker.sock" --data-root "$dk_dir/root" --exec-root "$dk_dir/exec" \
    --pidfile "$dk_dir/dockerd.pid" "${dk_flags[@]}" >"$dk_dir/dockerd.log" 2>&1 &
  started_pids+=($!)
  export DOCKER_HOST="unix://$dk_dir/docker.sock"
  for _ in $(seq 300); do docker version >/dev/null 2>&1 && break; sleep 0.1; done
  echo "private dockerd at $DOCKER_HOST"
fi
# The tests' image and anything they left (by label) go when the run ends.
export VAMP_TEST_RUN="r$$"
if docker version >/dev/null 2>&1; then
  cat >"$SERVERS_DIR/docker-cleanup.sh" <<EOF
#!/bin/sh
docker ps -a --format '{{.ID}} {{.Label "io.vamp.namespace"}}' | awk '\$2 ~ /^$VAMP_TEST_RUN-/ { print \$1 }' | xargs -r docker rm -f
docker volume ls --format '{{.Name}} {{.Label "io.vamp.namespace"}}' | awk '\$2 ~ /^$VAMP_TEST_RUN-/ { print \$1 }' | xargs -r docker volume rm -f
docker images -q --filter label=io.vamp.test=1 | xargs -r docker rmi -f
EOF
  chmod +x "$SERVERS_DIR/docker-cleanup.sh"
  stop_commands=("$SERVERS_DIR/docker-cleanup.sh" "${stop_commands[@]}")
fi

# The README's first command must build on a machine with nothing but Rust: no protoc (the
# etcd client's build script needs one; nothing in the demo's build may).
step "the canary demo builds without protoc"
PROTOC=/nonexistent/protoc cargo build --example canary_demo --quiet

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
if cargo tree -p vamp-backends -e normal --no-default-features --prefix none | grep -E '^(redis|etcd-client|sqlx|tiberius|zookeeper-client|hyper|hyper-util|bollard|reqwest|kube|k8s-openapi|elasticsearch) '; then
  echo "vamp-backends without features must not build backend SDKs" >&2
  exit 1
fi
for feature in kv-etcd kv-consul kv-redis kv-zookeeper persistence-postgres persistence-mysql persistence-sqlite persistence-mssql scheduler-local scheduler-docker scheduler-marathon scheduler-kubernetes metrics-elasticsearch metrics-prometheus; do
  cargo check -p vamp-backends --no-default-features --features "$feature" --quiet
done

# The images of the gateway agent and of vamp serve (packaging/), for the fleet test; and the
# systemd unit, checked by systemd itself.
if docker version >/dev/null 2>&1; then
  step "the gateway agent's and vamp's images (packaging/build-image.sh)"
  export VAMP_TEST_AGENT_IMAGE="vamp-gateway-agent:test-$VAMP_TEST_RUN"
  export VAMP_TEST_VAMP_IMAGE="vamp:test-$VAMP_TEST_RUN"
  stop_commands+=("docker rmi -f $VAMP_TEST_AGENT_IMAGE $VAMP_TEST_VAMP_IMAGE")
  ./packaging/build-image.sh agent "$VAMP_TEST_AGENT_IMAGE"
  ./packaging/build-image.sh vamp "$VAMP_TEST_VAMP_IMAGE"
fi
if command -v systemd-analyze >/dev/null 2>&1; then
  step "systemd-analyze verify packaging/systemd/vamp-gateway-agent.service"
  unit_dir="$SERVERS_DIR/unit"
  mkdir -p "$unit_dir"
  # The unit as installed, but for the binary's and the environment file's paths here.
  sed -e "s|^ExecStart=.*|ExecStart=$CARGO_TARGET_DIR/release/examples/gateway-agent|" \
      -e "s|^EnvironmentFile=.*|EnvironmentFile=$PWD/packaging/systemd/vamp-gateway-agent.env|" \
      packaging/systemd/vamp-gateway-agent.service >"$unit_dir/vamp-gateway-agent.service"
  [ -x "$CARGO_TARGET_DIR/release/examples/gateway-agent" ] || \
    cargo build --release --quiet -p vamp-examples --example gateway-agent --features etcd,consul,zookeeper,redis,docker,kubernetes,marathon,elasticsearch,prometheus
  verify_out="$(systemd-analyze verify "$unit_dir/vamp-gateway-agent.service" 2>&1 || true)"
  if [ -n "$verify_out" ]; then
    echo "$verify_out" >&2
    echo "the systemd unit does not verify cleanly" >&2
    exit 1
  fi
fi

step "cargo test --workspace"
cargo test --workspace --all-features 2>&1 | tee "${CARGO_TARGET_DIR}/test.log"

# Servers that cannot run here: their tests are ignored unless an address is given.
if [ -n "${VAMP_TEST_CONSUL_ADDR:-}" ]; then
  step "real Consul at $VAMP_TEST_CONSUL_ADDR"
  cargo test -p vamp-backends --features kv-consul --test consul -- --ignored 2>&1 | tee -a "${CARGO_TARGET_DIR}/test.log"
fi
if [ -n "${VAMP_TEST_MARATHON_URL:-}" ]; then
  step "real Marathon at $VAMP_TEST_MARATHON_URL"
  cargo test -p vamp-backends --features scheduler-marathon --test marathon -- --ignored 2>&1 | tee -a "${CARGO_TARGET_DIR}/test.log"
fi
if [ -n "${KUBECONFIG:-}" ] || [ "${VAMP_TEST_KUBERNETES:-}" = 1 ]; then
  step "real Kubernetes cluster"
  cargo test -p vamp-backends --features scheduler-kubernetes --test kubernetes -- --ignored 2>&1 | tee -a "${CARGO_TARGET_DIR}/test.log"
  # Vamp installed from packaging/kubernetes (its images loaded, a database and a key-value
  # store the pods reach).
  if [ -n "${VAMP_TEST_KUBERNETES_PERSISTENCE_URL:-}" ] && [ -n "${VAMP_TEST_KUBERNETES_KV_URL:-}" ]; then
    cargo test -p vamp-examples --all-features --test kubernetes_install -- --ignored a_real_cluster 2>&1 | tee -a "${CARGO_TARGET_DIR}/test.log"
  fi
fi
if [ -n "${VAMP_TEST_ELASTICSEARCH_URL:-}" ]; then
  step "real Elasticsearch at $VAMP_TEST_ELASTICSEARCH_URL"
  cargo test -p vamp-backends --features metrics-elasticsearch --test elasticsearch -- --ignored 2>&1 | tee -a "${CARGO_TARGET_DIR}/test.log"
fi
if [ -n "${VAMP_TEST_MSSQL_URL:-}" ]; then
  step "real SQL Server"
  cargo test -p vamp-backends --features persistence-mssql --test mssql -- --ignored 2>&1 | tee -a "${CARGO_TARGET_DIR}/test.log"
fi

step "the chaos soak, short (examples/chaos_soak.rs; README, The chaos soak)"
# The build of the test step above (all features); fails the run when an invariant breaks.
cargo run --quiet --all-features --example chaos_soak -- --duration 150 --report "${CARGO_TARGET_DIR}/chaos-soak.json"

step "the canary demo (the README's first command)"
cargo run --example canary_demo

step "vamp validate on the shipped example"
cargo run --quiet --example vamp -- validate examples/blueprints/sava.yml

step "summary"
awk '/^test result:/ { split($0, a, /[ ;.]+/); for (i = 1; i < length(a); i++) { if (a[i+1] == "passed") p += a[i]; if (a[i+1] == "failed") f += a[i]; if (a[i+1] == "ignored") s += a[i] } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "${CARGO_TARGET_DIR}/test.log"
