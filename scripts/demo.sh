#!/usr/bin/env bash
# The demo: build what is needed, describe this host's KVM, then boot. On a hardware-KVM host
# it boots the default Linux guest (kernel + busybox initramfs) to a shell on this terminal
# ('exit' powers it off), or straight through when stdin is not a terminal. On a PVM host, where
# no VMM can run a Linux guest's userspace, it shows gureum refusing that boot and boots the
# test guest instead, then benchmarks boots.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
gureum="$root/target/release/gureum"

echo "== gureum host-check"
"$gureum" host-check
kind=$("$gureum" host-check --json | sed -n 's/.*"kind": "\([a-z-]*\)".*/\1/p')

if [ "$kind" != pvm ]; then
  if [ -t 0 ]; then
    echo "== gureum boot (default Linux guest; type 'exit' to power it off)"
    exec "$gureum" boot --vcpus 2 --phases
  fi
  echo "== gureum boot (default Linux guest, no shell since stdin is not a terminal)"
  "$gureum" boot --vcpus 2 --phases --timeout 60 \
    --cmdline "console=ttyS0 reboot=k panic=1 pci=off nomodule gureum.shell=0 gureum.token=demo"
  echo "== gureum bench boot (default Linux guest)"
  exec "$gureum" bench boot --runs 10 \
    --cmdline "console=ttyS0 reboot=k panic=1 pci=off nomodule quiet gureum.shell=0"
fi

echo "== gureum boot (default Linux guest) on this PVM host:"
"$gureum" boot || true
guest=$("$root/guest-kernels/test-guest/build.sh" 2>/dev/null)
echo "== gureum boot --kernel test-guest --vcpus 2 --memory 256 --phases"
"$gureum" boot --kernel "$guest" --vcpus 2 --memory 256 --cmdline "token=demo" --phases
echo "== gureum bench boot --kernel test-guest --runs 20"
exec "$gureum" bench boot --kernel "$guest" --runs 20
