#!/usr/bin/env bash
# Installs and builds everything gureum's demo and tests need, idempotently:
# Debian packages, gureum itself (release), the default guest kernel + initramfs (cached under
# /var/cache/gureum by config hash), the guest agent's initramfs, and the test guest.
# Safe to run again: it only does what is missing or changed. Run as root on Debian 12.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
log() { printf 'setup: %s\n' "$*" >&2; }

# shellcheck source=lib.sh
. "$root/scripts/lib.sh"
ensure_packages build-essential curl qemu-system-x86 util-linux iproute2 e2fsprogs busybox-static runc runsc \
  podman containerd docker.io

if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  log "no Rust toolchain: gureum needs Rust 1.85 or later (edition 2024), e.g. from rustup"
  exit 1
fi

log "building gureum (release)"
cargo build --release --quiet
log "building the default guest (kernel + initramfs)"
guest-kernels/build.sh >/dev/null
log "building the guest agent and its initramfs (microVM containers)"
guest-kernels/agent-initramfs.sh >/dev/null
log "building the test guest"
guest-kernels/test-guest/build.sh 2>/dev/null >/dev/null
log "ready: target/release/gureum"
