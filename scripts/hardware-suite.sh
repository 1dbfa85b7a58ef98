#!/usr/bin/env bash
# Everything that needs hardware KVM, in one command with one summary, in well under 10 minutes:
# the Linux guest booted by gureum (vmlinux and bzImage, 1 and 2 vCPUs), the whole test suite
# (which then includes containers in microVM sandboxes and the virtio devices through Linux), and
# the benchmarks against QEMU microvm (boot: test guest and Linux guest; devices) and the
# VM-vs-container comparison (bench compare).
# On a PVM host it stops at once and says why (exit 2).
#
#   scripts/hardware-suite.sh            (as root; installs and builds what it needs)
#   GUREUM_BIN=path/to/gureum ...        use that binary for the host check (tests use this)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
gureum=${GUREUM_BIN:-$root/target/release/gureum}
if [ -z "${GUREUM_BIN:-}" ]; then
  cargo build --release --quiet || exit 1
fi
kind=$("$gureum" host-check --json 2>/dev/null | sed -n 's/.*"kind": "\([a-z-]*\)".*/\1/p')
case "$kind" in
  hardware) ;;
  pvm)
    echo "hardware-suite: this host's KVM is PVM (kvm_pvm): no VMM can run a Linux guest's userspace here, so there is nothing for this suite to prove; run it on a host with kvm_intel or kvm_amd"
    exit 2 ;;
  *)
    echo "hardware-suite: no usable KVM here (gureum host-check: ${kind:-failed}); run it on a host with kvm_intel or kvm_amd"
    exit 2 ;;
esac

"$root/scripts/setup.sh" || exit 1
guest=$("$root/guest-kernels/test-guest/build.sh" 2>/dev/null)
linux_cmdline="console=ttyS0 reboot=k panic=1 pci=off nomodule quiet gureum.shell=0"
summary=()
reports=()
step() {
  local name=$1; shift
  local log start rc
  log=$(mktemp)
  start=$(date +%s)
  "$@" > "$log" 2>&1
  rc=$?
  summary+=("$( [ $rc = 0 ] && echo PASS || echo FAIL )  $name  ($(( $(date +%s) - start )) s)")
  [ $rc = 0 ] || reports+=("== $name (failed)"$'\n'"$(tail -n 40 "$log")")
  case "$name" in bench*) reports+=("== $name"$'\n'"$(cat "$log")") ;; esac
  rm -f "$log"
}
step "Linux guest: vmlinux and bzImage, 1 and 2 vCPUs" cargo test --release --test linux_guest
step "all tests" cargo test --release --workspace --all-targets
step "bench boot: test guest vs QEMU microvm" "$gureum" bench boot --kernel "$guest" --runs 20
step "bench boot: Linux guest vs QEMU microvm" "$gureum" bench boot --runs 10 --cmdline "$linux_cmdline"
step "bench devices: block vs QEMU microvm" "$gureum" bench devices --kernel "$guest" --runs 5
step "containers in microVM sandboxes (and natively)" cargo test --release --test containers \
  --test containers_security --test containers_tty --test containers_manage --test containers_cgroup2 \
  --test images
step "bench compare: native, runc, sandbox, microVMs vs QEMU" "$gureum" bench compare --runs 10 \
  --density 10 --test-guest "$guest" --out "$root/target/bench-compare"
"$gureum" host-check
printf '%s\n' "${reports[@]}"
echo "== hardware-suite summary"
printf '%s\n' "${summary[@]}"
! printf '%s\n' "${summary[@]}" | grep '^FAIL' > /dev/null
