#!/usr/bin/env bash
# Runs every test: formatting and lints, unit tests, and the integration tests that boot real
# guests under KVM (the test guest wherever /dev/kvm exists; the Linux guest where the host can
# run it — the tests say why when it cannot). Builds and installs what is needed first.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
cd "$root"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace 2>&1
