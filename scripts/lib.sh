# Shared by gureum's shell scripts (sourced, not run).

# ensure_packages PKG...: apt-get install the Debian packages that are not installed yet.
ensure_packages() {
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  printf 'installing %s\n' "${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# ensure_qemu: QEMU 8 or later. The KVM test machine runs real KVM under QEMU's emulated SVM;
# Debian 12's own QEMU 7.2 corrupted that machine's kernel memory or hung it (a soft lockup)
# in 2 of 7 launches (docs/host-kvm.md), so on Debian 12 it comes from bookworm-backports.
ensure_qemu() {
  local have
  have=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
  if [ -n "$have" ] && dpkg --compare-versions "$have" ge 1:8; then
    return 0
  fi
  if grep -q '^VERSION_CODENAME=bookworm' /etc/os-release; then
    local list=/etc/apt/sources.list.d/bookworm-backports.sources
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      printf 'adding Debian bookworm-backports (for QEMU 8 or later) in %s\n' "$list" >&2
      printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' 'Suites: bookworm-backports' \
        'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' > "$list"
    fi
    printf 'installing qemu-system-x86 from bookworm-backports\n' >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports qemu-system-x86 >/dev/null
  else
    ensure_packages qemu-system-x86
  fi
}
