#!/usr/bin/env bash
# Runs every test: formatting and lints, unit tests, and the integration tests that boot real
# guests under KVM. The test guest runs wherever /dev/kvm exists. The tests that boot our Linux
# guest (microVM sandboxes, the Linux side of the devices) are ignored by a plain `cargo test`:
# here they run directly on a hardware-KVM host, and elsewhere (a PVM host, say) inside the KVM
# test machine (scripts/kvm-machine.sh: real kvm_amd under QEMU's software emulation).
# The last line counts every test: `summary: N passed, N failed, N skipped`.
# Builds and installs what is needed first.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
cd "$root"
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
# Each library crate alone, with only the features it asks for: a crate that leans on another's
# features or dependencies fails here, not in a user's build.
echo "== each crate builds on its own"
for crate in gureum-devices gureum-vmm gureum-process gureum-runtime gureum-agent; do
  cargo check --quiet -p "$crate"
done

kind=$(target/release/gureum host-check --json 2>/dev/null | sed -n 's/.*"kind": "\([a-z-]*\)".*/\1/p' || true)
# Under the checkout: the KVM test machine sees it, not this host's /tmp.
mkdir -p target
logs=$(mktemp -d "$root/target/test-logs.XXXXXX")
trap 'rm -rf "$logs"' EXIT
: > "$logs/machine"
status=0
if [ "$kind" = hardware ]; then
  echo "== cargo test (this host has hardware KVM: the Linux-guest tests run here too)"
  cargo test --workspace --all-targets --no-fail-fast -- --include-ignored 2>&1 | tee "$logs/host" || status=1
else
  echo "== cargo test (on this host)"
  cargo test --workspace --all-targets --no-fail-fast 2>&1 | tee "$logs/host" || status=1
  # The test binaries that hold Linux-guest tests, each with the directory cargo runs it in.
  cargo test --workspace --all-targets --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"manifest_path":"\([^"]*\)".*"executable":"\([^"]*\)".*/\1 \2/p' \
    | while read -r manifest exe; do
        # grep reads it all: with -q it could stop early and fail the pipe (pipefail).
        if "$exe" --list --ignored 2>/dev/null < /dev/null | grep ': test$' > /dev/null; then
          echo "$(dirname "$manifest") $exe"
        fi
      done > "$logs/binaries"
  # One run of a test binary in a fresh KVM test machine, its output in $logs/one.
  in_machine() {
    local dir=$1 rc
    shift
    set +e
    # machine-watch ends a binary still running after 900 s (the longest takes ~200 s) and
    # prints where its guests were first; the machine's own timeout is the backstop.
    "$root/scripts/kvm-machine.sh" --timeout 1800 -- "$root/scripts/machine-watch.sh" 900 \
      "$dir" "$@" 2>&1 < /dev/null | tee "$logs/one"
    rc=${PIPESTATUS[0]}
    set -e
    return "$rc"
  }
  echo "== cargo test -- --ignored, in the KVM test machine ($(wc -l < "$logs/binaries") test binaries, one machine each)"
  while read -r dir exe; do
    # A machine that itself fails (exit 125: its kernel crashed; see docs/host-kvm.md) is
    # started again for the tests of that binary that had not finished, up to 4 times; a
    # test that finished, passed or failed, is never run again in that round.
    : > "$logs/finished"
    : > "$logs/bin"
    : > "$logs/all"
    : > "$logs/hung"
    hangs=0
    for attempt in 1 2 3 4 5; do
      skips=()
      while read -r name; do skips+=(--skip "$name"); done < "$logs/finished"
      echo "     Running $exe --ignored (in the KVM test machine${skips:+, without the $(wc -l < "$logs/finished") finished})"
      rc=0
      in_machine "$dir" "$exe" --ignored --exact "${skips[@]}" || rc=$?
      cat "$logs/one" >> "$logs/all"
      sed -n 's/^test \([^ ]*\) \.\.\. \(ok\|FAILED\)$/\2 \1/p' "$logs/one" >> "$logs/bin"
      sed -n 's/^test \([^ ]*\) \.\.\. \(ok\|FAILED\)$/\1/p' "$logs/one" >> "$logs/finished"
      if [ "$rc" = 124 ] && [ "$hangs" = 0 ]; then
        # A hang: the tests that had run past 60 s and not finished are the suspects. The rest
        # of the binary runs once more in a fresh machine, and a suspect that then passes is
        # named in the summary (a nested guest the emulation froze, as it freezes QEMU's:
        # docs/host-kvm.md); a second hang fails.
        hangs=1
        sed -n 's/^test \([^ ]*\) has been running for over 60 seconds$/\1/p' "$logs/one" \
          | grep -vxF -f "$logs/finished" >> "$logs/hung" || true
        echo "== the tests above hung (where they were is printed above): once more, without the finished ones"
        continue
      fi
      [ "$rc" = 125 ] || break
      echo "== the KVM test machine itself failed (above), not a test: again for the tests not finished"
    done
    while read -r name; do
      sed -i "s/^ok $name\$/HUNG $name/" "$logs/bin"
    done < "$logs/hung"
    # 101: tests failed (each one is on a FAILED line); anything else but 0 is a failure of
    # its own (the machine failed 4 times, the binary crashed).
    case "$rc" in
      0) ;;
      101) grep '^FAILED ' "$logs/bin" > /dev/null || status=1 ;;
      *) status=1 ;;
    esac
    # In the emulated machine a nested guest sometimes ends in a triple fault, or never prints a
    # line (a sandbox whose agent never answered, its console empty), and no rerun repeats it:
    # the emulation corrupts or freezes it, as it does QEMU's (docs/host-kvm.md, "The freeze").
    # A test that failed that way, and only that way, runs once more, alone, in a fresh
    # machine; if it passes then it counts as passed and is named in the summary. Any other
    # failure is a failure: a wrong answer here has been gureum's own bug every time it was run
    # down.
    for name in $(sed -n 's/^FAILED //p' "$logs/bin"); do
      awk -v head="---- $name stdout ----" '
        $0 == head { on = 1; next }
        /^---- .* stdout ----$/ || /^failures:$/ { on = 0 }
        on' "$logs/all" | grep -E "guest stopped: triple fault|the guest console printed nothing" > /dev/null \
        || continue
      echo "     Running $exe --ignored --exact $name again (its guest triple-faulted or never printed a line), alone, in a fresh KVM test machine"
      in_machine "$dir" "$exe" --ignored --exact "$name" || true
      if grep -Fx "test $name ... ok" "$logs/one" > /dev/null; then
        sed -i "s/^FAILED $name\$/SECOND $name/" "$logs/bin"
      fi
    done
    cat "$logs/bin" >> "$logs/machine"
  done < "$logs/binaries"
fi
if grep '^FAILED ' "$logs/machine" > /dev/null; then status=1; fi

# One closing line over every test binary, both runs. A test ignored on this host and not run
# in the machine is skipped; one run in the machine counts once, as passed or failed.
awk -v machine="$logs/machine" '
  BEGIN {
    host = ARGV[1]; ARGV[1] = ""
    while ((getline line < host) > 0) {
      if (line !~ /^test result:/) continue
      n = split(line, f, " ")
      for (i = 2; i <= n; i++) {
        w = f[i]; sub(/;$/, "", w)
        if (w == "passed" || w == "failed" || w == "ignored") total[w] += f[i - 1]
      }
    }
    while ((getline line < machine) > 0) {
      if (line ~ /^ok /) mok++
      if (line ~ /^FAILED /) mfail++
      if (line ~ /^SECOND /) { mok++; second = second " " substr(line, 8) }
      if (line ~ /^HUNG /) { mok++; hung = hung " " substr(line, 6) }
    }
    if (second != "") printf "passed in the KVM test machine on a second try only (its guest triple-faulted or never printed a line in the first):%s\n", second
    if (hung != "") printf "passed in the KVM test machine on a second try only (hung in the first):%s\n", hung
    printf "summary: %d passed, %d failed, %d skipped\n", total["passed"] + mok,
      total["failed"] + mfail, total["ignored"] - mok - mfail
  }' "$logs/host"
exit "$status"
