#!/usr/bin/env bash
# Builds the image `fulcrum:local` used by docker-compose.yml: fulcrumd and fulcrum linked
# statically (glibc, +crt-static) in this workspace, stripped, in a FROM scratch image. Needs no
# registry. The static build has its own target dir (target/static) so the normal one stays valid.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v docker >/dev/null || { echo "docker not found" >&2; exit 1; }
triple=x86_64-unknown-linux-gnu
target_dir=${FULCRUM_STATIC_TARGET_DIR:-target/static}
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$target_dir" \
  cargo build --release --locked --target "$triple" -p fulcrum-node -p fulcrum-cli --bins
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
for b in fulcrumd fulcrum; do
  strip -o "$ctx/$b" "$target_dir/$triple/release/$b"
  # A static binary runs in an empty image; a dynamic one (with an ELF interpreter) would not.
  if readelf -l "$ctx/$b" | grep -q 'program interpreter'; then
    echo "$b is not statically linked" >&2
    exit 1
  fi
done
cp tests/compose/Dockerfile "$ctx/"
docker build -q -t fulcrum:local "$ctx" >/dev/null
echo "built image fulcrum:local ($(docker image inspect -f '{{.Size}}' fulcrum:local) bytes)"
