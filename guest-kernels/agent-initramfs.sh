#!/usr/bin/env bash
# Builds gureum-agent as a static binary and an initramfs whose /init it is; prints the
# initramfs's path. The agent mounts /proc, /sys, /dev and /run itself and serves the host on
# the transport named by gureum.agent= on the kernel command line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cache=${GUREUM_CACHE:-/var/cache/gureum}
target=x86_64-unknown-linux-gnu
# An explicit --target keeps the static flag off build scripts and proc macros.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release -p gureum-agent \
  --manifest-path "$root/Cargo.toml" --target "$target" --target-dir "$root/target/agent-static"
bin="$root/target/agent-static/$target/release/gureum-agent"
key=$(sha256sum "$bin" | cut -c1-16)
out="$cache/agent-initramfs-$key.cpio"
if [ ! -f "$out" ]; then
  mkdir -p "$cache"
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  mkdir -p "$stage"/{dev,proc,sys,run}
  install -m 0755 "$bin" "$stage/init"
  mknod -m 600 "$stage/dev/console" c 5 1
  (cd "$stage" && find . -print0 | sort -z | cpio --null -o -H newc --quiet) > "$out.tmp"
  mv "$out.tmp" "$out"
fi
# gureum's microVM containers boot this one.
mkdir -p "$cache/default"
ln -sfn "$out" "$cache/default/agent-initramfs.cpio"
echo "$out"
