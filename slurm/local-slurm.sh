#!/usr/bin/env bash
# A real single-node SLURM on this machine, for trying the sbatch scripts and for
# the test suite (as root, Debian/Ubuntu): installs slurm-wlm and munge if they
# are missing, writes a one-node slurm.conf, starts munged, slurmctld, slurmd.
#   slurm/local-slurm.sh up     start (idempotent)
#   slurm/local-slurm.sh down   stop what `up` started: slurmd, slurmctld, and
#                               munged if `up` started it (not one already running)
# The node claims 16 CPUs so an 8-task job fits on a 2-core machine. It changes
# the machine: packages, /etc/slurm/slurm.conf, /etc/munge/munge.key (kept by `down`).
set -euo pipefail
action=${1:-up}
run=/run/nvrxlog-slurm  # pid files of the daemons `up` started

if [[ $action == down ]]; then
  for name in slurmd slurmctld munged; do
    pidfile=$run/$name.pid
    [[ -f $pidfile ]] || continue
    pid=$(cat "$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || continue
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]] || continue  # gone (a stale file)
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 1 100); do  # up to 10 s, so a following `up` starts a fresh one
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && echo "local-slurm.sh: $name (pid $pid) is still running" >&2
  done
  rm -rf "$run"
  exit 0
fi
[[ $action == up ]] || { echo "usage: $0 up|down" >&2; exit 2; }
[[ $(id -u) == 0 ]] || { echo "local-slurm.sh: needs root" >&2; exit 3; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
fi

node=$(hostname -s)
mkdir -p /etc/slurm /etc/munge /run/munge /var/log/munge /var/lib/munge \
         /var/spool/slurmctld /var/spool/slurmd /var/log/slurm "$run"
if [[ ! -s /etc/munge/munge.key ]]; then
  head -c 1024 /dev/urandom > /etc/munge/munge.key
fi
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
chmod 0400 /etc/munge/munge.key

cat > /etc/slurm/slurm.conf <<CONF
ClusterName=nvrxlog-local
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$run/slurmctld.pid
SlurmdPidFile=$run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
NodeName=$node CPUs=16 RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF

if ! pgrep -x munged >/dev/null; then
  munged --force  # returns once the daemon runs
  # None ran before, so the one running now is ours: record it for `down`.
  pgrep -x -n munged > "$run/munged.pid"
fi
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq 1 60); do
  if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
    echo "local SLURM is up on $node"
    exit 0
  fi
  scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
  sleep 1
done
echo "local SLURM did not come up; see /var/log/slurm/" >&2
exit 1
