#!/usr/bin/env bash
# Builds a container image on the machine's Docker engine, from this repository alone: the
# program in release, Debian's HAProxy and the shared libraries both need, copied from this
# machine (Debian; `apt-get install haproxy` first), into a root file system that
# packaging/<image>/Dockerfile adds to an empty image. No base image is pulled.
#
#   packaging/build-image.sh agent [IMAGE]   # the gateway agent (default vamp-gateway-agent:latest)
#   packaging/build-image.sh vamp [IMAGE]    # vamp serve (default vamp:latest)
#
# Prints the image's size at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-agent}"
case "$which" in
  agent)
    image="${2:-vamp-gateway-agent:latest}"; dockerfile=packaging/gateway-agent/Dockerfile
    example=gateway-agent; program=gateway-agent
    own_dirs=(./run/vamp-gateway-agent ./usr/local/vamp) ;;
  vamp)
    image="${2:-vamp:latest}"; dockerfile=packaging/vamp/Dockerfile
    example=vamp; program=vamp
    own_dirs=(./var/lib/vamp) ;;
  *) echo "usage: $0 agent|vamp [IMAGE]" >&2; exit 2 ;;
esac
# One feature set for both programs, so that building the second image reuses the first's build.
features=etcd,consul,zookeeper,redis,docker,kubernetes,marathon,elasticsearch,prometheus,postgres,mysql,mssql
haproxy_bin="$(command -v haproxy || echo /usr/sbin/haproxy)"
[ -x "$haproxy_bin" ] || { echo "HAProxy is not installed (Debian: apt-get install haproxy)" >&2; exit 1; }
target="${CARGO_TARGET_DIR:-$PWD/target}"

cargo build --release --quiet -p vamp-examples --example "$example" --features "$features"
agent="$target/release/examples/$example"

work="$(mktemp -d -t vamp-image.XXXXXX)"
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root/usr/local/bin" "$root/usr/sbin" "$root/etc" "$root/tmp" "$root/etc/ssl/certs"
for d in "${own_dirs[@]}"; do mkdir -p "$root/$d"; chmod 0700 "$root/$d"; done
install -m 0755 "$agent" "$root/usr/local/bin/$program"
install -m 0755 "$haproxy_bin" "$root/usr/sbin/haproxy"
# The shared libraries (and the loader) of both programs, at the paths they were found.
for bin in "$agent" "$haproxy_bin"; do
  ldd "$bin" | awk '/=> \// { print $3 } /^\s*\/[^ ]+ \(/ { print $1 }' | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
done
# The loader's usual path is a link on Debian (/lib64 -> /lib/x86_64-linux-gnu).
if [ -e /lib64/ld-linux-x86-64.so.2 ] && [ ! -e "$root/lib64/ld-linux-x86-64.so.2" ]; then
  mkdir -p "$root/lib64"
  cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
fi
[ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'vamp:x:1988:1988:vamp gateway agent:/run/vamp-gateway-agent:/sbin/nologin' >"$root/etc/passwd"
printf '%s\n' 'root:x:0:' 'vamp:x:1988:' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
chmod 1777 "$root/tmp"
# Files in a fixed order, owned by root but for the agent's own directories, with one time:
# the same inputs give the same root file system.
excludes=(); for d in "${own_dirs[@]}"; do excludes+=(--exclude="$d"); done
tar --sort=name --mtime='2026-01-01 00:00:00' --owner=0 --group=0 --numeric-owner \
  -C "$root" -cf "$work/rootfs.tar" "${excludes[@]}" .
tar --mtime='2026-01-01 00:00:00' --owner=1988 --group=1988 --numeric-owner \
  -C "$root" -rf "$work/rootfs.tar" "${own_dirs[@]}"
cp "$dockerfile" "$work/Dockerfile"
DOCKER_BUILDKIT=0 docker build --quiet --label "io.vamp.image=$which" -t "$image" "$work" >/dev/null
echo "$image: $(docker image inspect --format '{{.Size}}' "$image" | awk '{ printf "%.1f MB", $1 / 1000000 }')"
