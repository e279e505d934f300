#!/usr/bin/env bash
# A real one-node SLURM cluster (Debian slurm-wlm + munge) on this machine, without systemd or cgroups:
# for trying megasynth's SLURM launchers and sweeps on a workstation or in CI.
#
#   launch/slurm_cluster.sh install          # apt-get install slurm-wlm munge (root; daemons not started)
#   launch/slurm_cluster.sh start [--cpus N] # write slurm.conf, start munged, slurmctld, slurmd; wait for `idle`
#   launch/slurm_cluster.sh status           # sinfo + squeue
#   launch/slurm_cluster.sh stop             # cancel jobs, stop the daemons started by `start`
#
# Needs root (daemons run as the `slurm`/`munge` users the packages create). The node is this host
# (`hostname -s`, reached at 127.0.0.1), one partition `debug`, no accounting (no sacct: use
# `scontrol show job` within MinJobAge), no cgroups. --cpus (default: nproc) may exceed the real core
# count (SlurmdParameters=config_overrides), to run more single-CPU array tasks at once.
# A slurm.conf that this script did not write is never overwritten; when `start` changes one it wrote
# while the daemons run, it applies it with `scontrol reconfigure` (running jobs keep running).
# KillWait=30 (Slurm's default): after SIGTERM (scancel, scontrol requeue, the time limit) a job has 30 s
# to save its checkpoint before SIGKILL. sched_interval/bf_interval=5: a requeued job starts again within
# seconds of its credential expiring (AuthInfo=cred_expire=10) instead of at the next 30-60 s pass.
# Facts behind the configuration: Slurm 22.05 on Debian 12, one node, no systemd, no cgroups.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by megasynth launch/slurm_cluster.sh"
PIDS=(/run/slurm/slurmd.pid /run/slurm/slurmctld.pid /run/munge/munged.pid)

die() { echo "slurm_cluster: error: $*" >&2; exit 2; }
need_root() { [[ $(id -u) -eq 0 ]] || die "$1 needs root"; }

cmd_install() {
  need_root install
  if command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v munged >/dev/null; then
    echo "slurm-wlm and munge are installed"; return 0
  fi
  # The packages' post-install scripts try to start services; a temporary policy-rc.d stops that.
  local policy=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
  [[ -n "$policy" ]] && rm -f /usr/sbin/policy-rc.d
  echo "installed: $(dpkg-query -W -f 'slurm-wlm ${Version}, munge ' slurm-wlm) $(dpkg-query -W -f '${Version}' munge)"
}

write_conf() {
  local cpus=$1 host mem
  host=$(hostname -s)
  mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)   # MiB, ~90% of MemTotal
  if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
    echo "slurm_cluster: keeping $CONF (not written by this script)" >&2; return 0
  fi
  mkdir -p /etc/slurm
  cat > "$CONF.tmp" <<EOF
$MARK
ClusterName=megasynth
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
MailProg=/bin/true
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
KillWait=30
OverTimeLimit=0
InactiveLimit=0
MinJobAge=300
Waittime=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  if [[ -f $CONF ]] && cmp -s "$CONF.tmp" "$CONF"; then rm -f "$CONF.tmp"; return 0; fi
  mv "$CONF.tmp" "$CONF"
  CONF_CHANGED=1
}

alive() {  # alive PIDFILE NAME: the PID in PIDFILE runs a process called NAME
  local pid
  [[ -f $1 ]] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ -n $pid && -r /proc/$pid/comm && $(cat "/proc/$pid/comm") == "$2" ]]
}

cmd_start() {
  need_root start
  local cpus
  cpus=$(nproc)
  while [[ $# -gt 0 ]]; do
    case $1 in
      --cpus) cpus=${2:?--cpus needs a number}; shift 2 ;;
      *) die "start: unknown option $1" ;;
    esac
  done
  [[ $cpus =~ ^[1-9][0-9]*$ ]] || die "--cpus: expected a positive integer, got $cpus"
  command -v slurmctld >/dev/null || die "slurm-wlm is not installed (run: $0 install)"
  CONF_CHANGED=""
  write_conf "$cpus"
  if [[ -n $CONF_CHANGED ]] && alive /run/slurm/slurmctld.pid slurmctld; then
    scontrol reconfigure && echo "slurm_cluster: $CONF changed: reconfigured the running daemons"
  fi
  mkdir -p /run/munge /run/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  chown munge:munge /run/munge; chown slurm:slurm /var/spool/slurmctld /var/log/slurm
  alive /run/munge/munged.pid munged || runuser -u munge -- /usr/sbin/munged
  alive /run/slurm/slurmctld.pid slurmctld || /usr/sbin/slurmctld -i
  alive /run/slurm/slurmd.pid slurmd || /usr/sbin/slurmd
  local state="" i
  for i in $(seq 1 60); do
    state=$(sinfo -h -o %t 2>/dev/null | head -n 1 || true)
    [[ $state == idle* || $state == mix* || $state == alloc* ]] && break
    sleep 0.5
  done
  [[ $state == idle* || $state == mix* || $state == alloc* ]] || {
    tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
    die "the node did not become idle within 30 s (state: ${state:-none}); logs above"
  }
  echo "slurm cluster up: node $(hostname -s), $cpus CPUs, partition debug ($(sinfo -h -o %t | head -n 1))"
}

cmd_stop() {
  local f name pid
  if command -v scancel >/dev/null && alive /run/slurm/slurmctld.pid slurmctld; then
    scancel --user="$(id -un)" 2>/dev/null || true
    [[ $(id -u) -eq 0 ]] && scancel --state=PENDING,RUNNING,SUSPENDED 2>/dev/null || true
  fi
  for f in "${PIDS[@]}"; do
    name=$(basename "$f" .pid)
    if alive "$f" "$name"; then
      pid=$(cat "$f"); kill -TERM "$pid"
      for _ in $(seq 1 50); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
      echo "stopped $name ($pid)"
    fi
  done
}

cmd_status() {
  command -v sinfo >/dev/null || die "slurm-wlm is not installed"
  sinfo; squeue
}

case ${1:-} in
  install) shift; cmd_install "$@" ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  status) shift; cmd_status "$@" ;;
  -h|--help|"") sed -n '2,19p' "$0"; [[ -n ${1:-} ]] ;;
  *) die "unknown command $1 (install, start, status, stop)" ;;
esac
