#!/usr/bin/env bash
# Start a one-node SLURM cluster on localhost (munge + slurmctld + slurmd, two fake GPUs) for the
# live SLURM test; root only, no systemd needed. Installs Debian's packages when they are missing.
# State, spool and logs live in $STATE (default /tmp/dpbench-slurm); the PIDs of the daemons it
# started go to $STATE/pids, for stop.sh. The configuration must be /etc/slurm/slurm.conf (and
# gres.conf): the executor plugin's job step drops SLURM_CONF before its nested srun. Refuses to
# replace a slurm.conf it did not write. Job status comes from squeue (no accounting database), as
# the project's SLURM profile asks.
set -euo pipefail
STATE=${STATE:-/tmp/dpbench-slurm}
MARK="# written by dpbench scripts/local-slurm/start.sh"
CONF_DIR=/etc/slurm
[[ $(id -u) == 0 ]] || { echo "start.sh: needs root (it starts munged, slurmctld, slurmd)" >&2; exit 3; }
if [[ -s "$STATE/pids" ]]; then
  echo "start.sh: $STATE/pids exists: a cluster from this state directory runs; stop it first (stop.sh)" >&2; exit 4
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || { echo "start.sh: SLURM is not installed and apt-get is unavailable" >&2; exit 5; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends munge slurmd slurmctld slurm-client >/dev/null
fi

if [[ -e $CONF_DIR/slurm.conf ]] && ! grep -qxF "$MARK" "$CONF_DIR/slurm.conf"; then
  echo "start.sh: $CONF_DIR/slurm.conf exists and is not ours; not touching a real cluster's configuration" >&2; exit 4
fi
if [[ -e $CONF_DIR/slurm.conf ]] && scontrol ping 2>/dev/null | grep -q UP; then
  echo "start.sh: a SLURM controller already answers (started from another state directory?); stop it first" >&2; exit 4
fi
mkdir -p "$STATE"/{spool/ctld,spool/d,log,dev} "$CONF_DIR"
: > "$STATE/pids"

# munge: one key per machine, the daemon runs as the munge user
if [[ ! -s /etc/munge/munge.key ]]; then
  mungekey --create 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then   # no munged yet: start ours
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 20); do [[ -s /run/munge/munged.pid ]] && break; sleep 0.25; done
  cat /run/munge/munged.pid >> "$STATE/pids"
fi
munge -n | unmunge >/dev/null

# two fake GPUs: jobs asking for --gpus=N / --gres=gpu:N get scheduled (no device behind them)
for i in 0 1; do [[ -e "$STATE/dev/fakegpu$i" ]] || mknod "$STATE/dev/fakegpu$i" c 1 3; done
printf '%s\nNodeName=localhost Name=gpu File=%s\n' "$MARK" "$STATE/dev/fakegpu[0-1]" > "$CONF_DIR/gres.conf"

MEM_MB=$(( $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) * 8 / 10 ))
cat > "$CONF_DIR/slurm.conf" <<CONF
$MARK
ClusterName=dpbench-ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmdSpoolDir=$STATE/spool/d
StateSaveLocation=$STATE/spool/ctld
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=300
GresTypes=gpu
NodeName=localhost CPUs=$(nproc) RealMemory=$MEM_MB Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
slurmctld -D > "$STATE/log/slurmctld.out" 2>&1 & echo $! >> "$STATE/pids"
for _ in $(seq 40); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.5; done
slurmd -D -N localhost > "$STATE/log/slurmd.out" 2>&1 & echo $! >> "$STATE/pids"
for _ in $(seq 60); do sinfo -h -o %T 2>/dev/null | grep -qx idle && break; sleep 0.5; done
if ! sinfo -h -o %T | grep -qx idle; then
  echo "start.sh: the node did not come up; logs in $STATE/log" >&2
  tail -n 20 "$STATE/log/"*.out "$STATE/log/"*.log >&2 || true
  exit 6
fi
sinfo
