#!/usr/bin/env bash
# Builds gureum's default guest: a minimal Linux kernel (vmlinux + bzImage) from Debian's
# linux-source and a busybox-static initramfs. Both are cached outside the checkout, keyed by
# the hash of what produced them, so an unchanged config "rebuilds" instantly.
#
#   guest-kernels/build.sh            build (or reuse) and print the paths
#   GUREUM_CACHE=/some/dir build.sh   cache somewhere else (default /var/cache/gureum)
#
# Results: $GUREUM_CACHE/default/{vmlinux,bzImage,initramfs.cpio} (symlinks into the cache).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${GUREUM_CACHE:-/var/cache/gureum}
jobs=$(nproc)
log() { printf 'guest-kernels: %s\n' "$*" >&2; }

# shellcheck source=../scripts/lib.sh
. "$here/../scripts/lib.sh"
ensure_packages linux-source bc bison flex libelf-dev libssl-dev lz4 cpio busybox-static make gcc

tarball=$(ls /usr/src/linux-source-*.tar.xz | sort -V | tail -n 1)
version=$(basename "$tarball" .tar.xz)
mkdir -p "$cache/default"

# ---- kernel ----------------------------------------------------------------------------------
# The key covers what determines the kernel: the config, the source version, and the recipe
# (bump KERNEL_RECIPE when the make steps below change).
KERNEL_RECIPE=1
key=$(cat "$here/microvm-x86_64.config" <(echo "$version recipe $KERNEL_RECIPE") | sha256sum | cut -c1-16)
kdir="$cache/kernel-$key"
if [ -f "$kdir/vmlinux" ] && [ -f "$kdir/bzImage" ]; then
  log "kernel $key is cached ($version)"
else
  src="$cache/$version"
  if [ ! -f "$src/Makefile" ]; then
    log "unpacking $tarball"
    rm -rf "$src.tmp" && mkdir -p "$src.tmp"
    tar -xJf "$tarball" -C "$src.tmp" --strip-components=1
    mv "$src.tmp" "$src"
  fi
  # One build tree per source version: a changed config rebuilds only what it changes.
  bdir="$cache/build-$version"
  mkdir -p "$bdir"
  make -s -C "$src" O="$bdir" ARCH=x86_64 KCONFIG_ALLCONFIG="$here/microvm-x86_64.config" allnoconfig
  # Every option the fragment asks for must have survived dependency resolution.
  bad=0
  while IFS= read -r line; do
    case "$line" in CONFIG_*=n) want="# ${line%%=*} is not set" ;; CONFIG_*) want=$line ;; *) continue ;; esac
    if ! grep -qxF "$want" "$bdir/.config"; then
      if [[ $line == *=n ]] && ! grep -q "^${line%%=*}=" "$bdir/.config"; then continue; fi
      log "config option did not take: $line"; bad=1
    fi
  done < "$here/microvm-x86_64.config"
  [ "$bad" = 0 ] || { log "fix microvm-x86_64.config"; exit 1; }
  log "building $version with $jobs jobs into $bdir (progress: objects compiled)"
  make -C "$src" O="$bdir" ARCH=x86_64 -j"$jobs" vmlinux bzImage 2>&1 | awk '
    / CC /{n++; if (n % 100 == 0) { printf "guest-kernels: %d objects compiled\n", n > "/dev/stderr" } }
    /error:|Error [0-9]/{print > "/dev/stderr"}'
  [ "${PIPESTATUS[0]}" = 0 ] || { log "kernel build failed"; exit 1; }
  mkdir -p "$kdir.tmp"
  cp "$bdir/vmlinux" "$bdir/arch/x86/boot/bzImage" "$bdir/.config" "$kdir.tmp/"
  rm -rf "$kdir" && mv "$kdir.tmp" "$kdir"
  log "kernel $key built"
fi
ln -sfn "$kdir/vmlinux" "$cache/default/vmlinux"
ln -sfn "$kdir/bzImage" "$cache/default/bzImage"

# ---- initramfs -------------------------------------------------------------------------------
bb=/bin/busybox
INITRAMFS_RECIPE=1
ikey=$(cat "$here/initramfs/init" "$here/initramfs/boot-timer.c" "$bb" <(echo "recipe $INITRAMFS_RECIPE") | sha256sum | cut -c1-16)
ifile="$cache/initramfs-$ikey.cpio"
if [ ! -f "$ifile" ]; then
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  mkdir -p "$stage"/{bin,dev,proc,sys,tmp,root,etc}
  cp "$bb" "$stage/bin/busybox"
  ln -s busybox "$stage/bin/sh"
  install -m 0755 "$here/initramfs/init" "$stage/init"
  gcc -static -O2 -o "$stage/bin/boot-timer" "$here/initramfs/boot-timer.c"
  mknod -m 600 "$stage/dev/console" c 5 1
  mknod -m 666 "$stage/dev/null" c 1 3
  (cd "$stage" && find . -print0 | sort -z | cpio --null -o -H newc --quiet) > "$ifile.tmp"
  mv "$ifile.tmp" "$ifile"
  log "initramfs $ikey built"
fi
ln -sfn "$ifile" "$cache/default/initramfs.cpio"

echo "$cache/default/vmlinux"
echo "$cache/default/bzImage"
echo "$cache/default/initramfs.cpio"
