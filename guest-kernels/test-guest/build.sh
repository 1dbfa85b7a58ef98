#!/usr/bin/env bash
# Builds the test guest and prints the path of its ELF. A static, non-PIE x86_64 ELF linked at
# 2 MiB, built with the machine's own x86_64-unknown-linux-gnu toolchain (no extra target).
# No SSE: a PVM host's emulator cannot execute SSE at CPL0. rustc warns that disabling sse2 on
# this target is being phased out; the x86_64-unknown-none target is the way out when it goes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
RUSTFLAGS="-C relocation-model=static -C target-cpu=x86-64 -C target-feature=-sse,-sse2,+soft-float" \
  cargo build --quiet --release --manifest-path "$here/Cargo.toml" --target-dir "$here/target"
echo "$here/target/release/gureum-test-guest"
