#!/usr/bin/env bash
# Stop the daemons that start.sh started, newest first, by the PIDs it recorded in $STATE/pids, and
# remove the configuration files it wrote (only those carrying its mark).
STATE=${STATE:-/tmp/dpbench-slurm}
MARK="# written by dpbench scripts/local-slurm/start.sh"
if [[ -f "$STATE/pids" ]]; then
  for pid in $(tac "$STATE/pids"); do
    kill -0 "$pid" 2>/dev/null || continue
    kill -TERM "$pid"
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
  done
fi
# Stale PID files break a later start (and, in /run, the Debian packages' removal scripts).
rm -f "$STATE/pids" "$STATE/slurmctld.pid" "$STATE/slurmd.pid"
if [[ -e /run/slurmctld.pid ]] && ! kill -0 "$(cat /run/slurmctld.pid 2>/dev/null)" 2>/dev/null; then
  rm -f /run/slurmctld.pid
fi
for f in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
  if grep -qxF "$MARK" "$f" 2>/dev/null; then rm -f "$f"; fi
done
exit 0
