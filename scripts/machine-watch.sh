#!/usr/bin/env bash
# Usage: machine-watch.sh SECS DIR COMMAND [ARGS...]
# Runs COMMAND in DIR (inside the KVM test machine, for scripts/test.sh) and, if it is still
# running after SECS seconds, prints where everything is and ends it with status 124: each
# process (state, kernel wait channel, command), each VMM's threads with the CPU they used over
# 2 s (a vCPU thread in R that burns a CPU runs a guest that makes no progress; one asleep in
# kvm_vcpu_block has a halted guest), and the last lines of every sandbox's guest console.
# What a hang leaves behind is then on record, not only that it happened.
set -uo pipefail
limit=$1 dir=$2
shift 2
cd "$dir" || exit 2
setsid "$@" &
pid=$!
deadline=$((SECONDS + limit))
while kill -0 "$pid" 2>/dev/null; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "== machine-watch: still running after $limit s; where everything is:"
    ps -eo pid,ppid,etimes,stat,wchan:24,args --sort pid | grep -v ' \[.*\]$' | cut -c1-240
    ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "$1" 2>/dev/null; }
    vmms=$(pgrep -x gureum-vmm)
    declare -A before=()
    for t in $(for v in $vmms; do echo /proc/"$v"/task/*; done); do before[$t]=$(ticks "$t/stat"); done
    sleep 2
    for vmm in $vmms; do
      echo "-- threads of VMM $vmm ($(tr '\0' ' ' < "/proc/$vmm/cmdline" 2>/dev/null | cut -c1-160)):"
      for t in /proc/"$vmm"/task/*; do
        now=$(ticks "$t/stat")
        echo "   $(cat "$t/comm" 2>/dev/null) $(awk '{ sub(/.*\) /, ""); print $1 }' "$t/stat" 2>/dev/null)" \
          "in $(cat "$t/wchan" 2>/dev/null), $(( ${now:-0} - ${before[$t]:-0} )) ticks of CPU in 2 s"
      done
    done
    find /tmp /run -name console.log -mmin -30 2>/dev/null | while read -r log; do
      echo "-- $log, its last lines:"
      tail -n 8 "$log" | sed 's/^/   /'
    done
    kill -KILL -- -"$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    exit 124
  fi
  sleep 1
done
wait "$pid"
