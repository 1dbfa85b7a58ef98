#!/usr/bin/env bash
# scripts/kvm-machine.sh [OPTIONS] [--] COMMAND [ARG...]
#
# Runs COMMAND as root inside the KVM test machine: Debian's stock kernel booted under QEMU's
# software emulation with `-cpu max`, an emulated AMD CPU with SVM and nested paging, where
# /dev/kvm is kvm_amd, the same KVM code that runs on AMD hardware. For hosts without hardware
# KVM (such as a PVM host): gureum boots Linux guests and sandboxes there for real. Its speeds
# are emulated; compare them only as ratios against peers run in the same machine.
#
# Inside, this host's root is visible read-only at the same paths (the checkout, the build
# output, the guest kernel cache), with a tmpfs over it for writes that vanish at the end.
# /tmp, /run and gureum's image layer cache are fresh, empty tmpfs (an overlay cannot hold the
# whiteouts that image layers need); cgroup v2 is mounted. COMMAND runs in the current directory with
# the current environment, stdin from /dev/null; its stdout and stderr stream here as it runs.
# The exit status is COMMAND's; 124 when --timeout ends it; 125 when the machine itself fails
# or stops responding (the last lines of its kernel log are printed). Nothing is left running or mounted.
#
# Options:
#   --timeout SECS   end the machine after SECS seconds (default 3600)
#   --share DIR      make DIR (an existing host directory) writable inside at its own path;
#                    repeatable (for files that must come back, such as benchmark output)
#   --cpus N         vCPUs (default: this host's CPU count)
#   --memory MIB     memory (default 6144)
#   --log FILE       keep the machine's kernel log in FILE
#   --setup          only install and build what the machine needs, then exit
#
# For experiments (docs/host-kvm.md, the freeze): GUREUM_KVM_MACHINE_CPU replaces `-cpu max`
# (say, max,tsc-deadline=off), GUREUM_KVM_MACHINE_ACCEL replaces `tcg,thread=multi`,
# GUREUM_KVM_MACHINE_APPEND is added to the machine kernel's command line, and
# GUREUM_KVM_MACHINE_QUIET= (empty) keeps its boot messages in the --log.
#
# Needs (installed when missing): qemu-system-x86, busybox-static, cpio, and Debian's
# linux-image-amd64 package, which is downloaded and unpacked into the cache
# ($GUREUM_CACHE, default /var/cache/gureum, under kvm-machine/), never installed on the host.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=lib.sh
. "$root/scripts/lib.sh"
say() { printf 'kvm-machine: %s\n' "$*" >&2; }

timeout=3600 cpus=$(nproc) memory=6144 log="" setup_only=0 shares=()
while [ $# -gt 0 ]; do
  case "$1" in
    --timeout) timeout=$2; shift 2 ;;
    --share) shares+=("$(cd "$2" && pwd)"); shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --memory) memory=$2; shift 2 ;;
    --log) log=$2; shift 2 ;;
    --setup) setup_only=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) say "unknown option $1 (see --help)"; exit 2 ;;
    *) break ;;
  esac
done
if [ "$setup_only" = 0 ] && [ $# -eq 0 ]; then
  say "no command given (usage: scripts/kvm-machine.sh [OPTIONS] -- COMMAND [ARG...])"
  exit 2
fi
[ "$(id -u)" = 0 ] || { say "needs root (it exports this host's root to the machine)"; exit 2; }

ensure_packages qemu-system-x86 busybox-static cpio
cache=${GUREUM_CACHE:-/var/cache/gureum}/kvm-machine
mkdir -p "$cache"

# The kernel: the version linux-image-amd64 points at, unpacked once.
kernel_package() {
  local pkg
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/.*Depends: \(linux-image-[^ ]*\).*/\1/p' | head -1)
  if [ -z "$pkg" ]; then
    apt-get update -qq
    pkg=$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: \(linux-image-[^ ]*\).*/\1/p' | head -1)
  fi
  [ -n "$pkg" ] || { say "Debian's linux-image-amd64 package is not known to apt"; exit 125; }
  echo "$pkg"
}
if [ -e "$cache/kernel" ]; then
  kdir=$(readlink -f "$cache/kernel")
else
  pkg=$(kernel_package)
  kdir="$cache/$pkg"
  if [ ! -f "$kdir/done" ]; then
    say "fetching $pkg (Debian's stock kernel, unpacked into $kdir, not installed)"
    rm -rf "$kdir" && mkdir -p "$kdir/deb"
    (cd "$kdir/deb" && apt-get download -q "$pkg" >/dev/null 2>&1) \
      || { say "cannot download $pkg with apt-get"; exit 125; }
    dpkg-deb -x "$kdir"/deb/*.deb "$kdir/tree"
    rm -rf "$kdir/deb"
    version=$(ls "$kdir/tree/lib/modules")
    busybox depmod -b "$kdir/tree" "$version"
    touch "$kdir/done"
  fi
  ln -sfn "$kdir" "$cache/kernel"
fi
version=$(ls "$kdir/tree/lib/modules")
vmlinuz="$kdir/tree/boot/vmlinuz-$version"

# The initramfs: busybox, the modules below and their dependencies, and the init.
modules="virtio_pci 9pnet_virtio 9p overlay virtio_console kvm_amd tun veth loop"
ikey=$( (echo "$version $modules"; cat "$root/scripts/kvm-machine.init"; busybox | sed -n 1p) \
  | sha256sum | cut -c1-16)
initrd="$cache/initrd-$ikey.cpio"
if [ ! -f "$initrd" ]; then
  stage=$(mktemp -d)
  mkdir -p "$stage"/{bin,dev,proc,sys,lib/modules/"$version"}
  cp /bin/busybox "$stage/bin/busybox"
  install -m 0755 "$root/scripts/kvm-machine.init" "$stage/init"
  echo "$modules" > "$stage/modules.list"
  mdir="$kdir/tree/lib/modules/$version"
  # The closure of the modules' dependencies, from the package's own modules.dep.
  for m in $modules; do
    f=$(sed -n "s,^\(kernel/.*/${m//_/[_-]}\.ko\):\(.*\),\1\2,p" "$mdir/modules.dep")
    [ -n "$f" ] || { say "module $m is not in $version"; exit 125; }
    for dep in $f; do
      mkdir -p "$stage/lib/modules/$version/$(dirname "$dep")"
      cp "$mdir/$dep" "$stage/lib/modules/$version/$dep"
    done
  done
  busybox depmod -b "$stage" "$version"
  (cd "$stage" && find . -print0 | sort -z | cpio --null -o -H newc --quiet) > "$initrd.tmp"
  mv "$initrd.tmp" "$initrd"
  rm -rf "$stage"
fi
[ "$setup_only" = 1 ] && exit 0

# The control directory: the command as a script, and its exit status, written back.
ctl=$(mktemp -d /tmp/gureum-kvm-machine.XXXXXX)
console=$ctl/console.log
qemu_pid=""
cleanup() {
  local rc=$?
  set +e
  [ -n "$qemu_pid" ] && kill -KILL "$qemu_pid" 2>/dev/null && wait "$qemu_pid" 2>/dev/null
  [ -n "$log" ] && cp "$console" "$log" 2>/dev/null
  rm -rf "$ctl"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
{
  echo 'set -e'
  export -p | grep -Ev '^(declare -x|export) (BASH_[A-Z_]*|OLDPWD|PWD|SHLVL|_|TERM|SSH_[A-Z_]*)='
  printf 'cd %q\n' "$PWD"
  printf 'set +e\nexec'
  printf ' %q' "$@"
  echo
} | sed 's/^declare -x /export /' > "$ctl/run.sh"

shared=""
fsdevs=(-fsdev "local,id=hostroot,path=/,security_model=passthrough,readonly=on,multidevs=remap"
        -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot)
n=0
for dir in "$ctl" "${shares[@]}"; do
  fsdevs+=(-fsdev "local,id=share$n,path=$dir,security_model=passthrough,multidevs=remap"
           -device "virtio-9p-pci,fsdev=share$n,mount_tag=share$n")
  [ "$dir" != "$ctl" ] && shared+="${shared:+,}$dir"
  n=$((n + 1))
done

# The command's stdout and stderr: FIFOs that cat copies through this script's own descriptors
# (a file QEMU opened itself would write at its own offset).
mkfifo "$ctl/stdout" "$ctl/stderr"
cat "$ctl/stdout" &
cat "$ctl/stderr" >&2 &

fresh="/tmp,/run,${GUREUM_CACHE:-/var/cache/gureum}/layers"
cmdline="console=ttyS0 ${GUREUM_KVM_MACHINE_QUIET-quiet} panic=-1 softlockup_panic=1 gureum.run=$ctl/run.sh gureum.tmpfs=$fresh ${GUREUM_KVM_MACHINE_APPEND:-}"
[ -n "$shared" ] && cmdline+=" gureum.shares=$shared"
qemu-system-x86_64 -M q35 -accel "${GUREUM_KVM_MACHINE_ACCEL:-tcg,thread=multi}" -cpu "${GUREUM_KVM_MACHINE_CPU:-max}" -smp "$cpus" -m "$memory" \
  -nodefaults -no-user-config -display none -no-reboot \
  -kernel "$vmlinuz" -initrd "$initrd" -append "$cmdline" \
  -serial "file:$console" \
  -device virtio-serial-pci \
  -chardev "file,id=out,path=$ctl/stdout" -device virtserialport,chardev=out,name=stdout \
  -chardev "file,id=err,path=$ctl/stderr" -device virtserialport,chardev=err,name=stderr \
  "${fsdevs[@]}" < /dev/null &
qemu_pid=$!

# Wait for the machine, up to the timeout.
deadline=$((SECONDS + timeout))
while kill -0 "$qemu_pid" 2>/dev/null; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    say "timed out after ${timeout} s; the machine's last kernel lines:"
    tail -n 20 "$console" >&2
    exit 124
  fi
  # The machine writes a heartbeat every 5 s; 90 s without one is a machine that froze (its
  # kernel stopped, see docs/host-kvm.md), not a slow command.
  if [ -e "$ctl/heartbeat" ] && [ ! -e "$ctl/status" ] &&
     [ $(( $(date +%s) - $(stat -c %Y "$ctl/heartbeat") )) -gt 90 ]; then
    say "the machine stopped responding (no heartbeat for 90 s); its last kernel lines:"
    tail -n 20 "$console" >&2
    exit 125
  fi
  sleep 0.2
done
wait "$qemu_pid" || true
qemu_pid=""
wait
if [ ! -s "$ctl/status" ]; then
  say "the machine stopped before the command finished; its last kernel lines:"
  tail -n 30 "$console" >&2
  exit 125
fi
exit "$(cat "$ctl/status")"
