# Shared by gureum's shell scripts (sourced, not run).

# ensure_packages PKG...: apt-get install the Debian packages that are not installed yet.
# No daemon a package ships is started (docker.io's, containerd's): the tests start their own,
# private ones, and the host's network and services stay as they were.
ensure_packages() {
  local missing=() p policy=/usr/sbin/policy-rc.d ours=
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  printf 'installing %s\n' "${missing[*]}" >&2
  apt-get update -qq
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && ours=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" \
    >/dev/null || { [ -z "$ours" ] || rm -f "$policy"; return 1; }
  [ -z "$ours" ] || rm -f "$policy"
}

