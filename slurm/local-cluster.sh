#!/usr/bin/env bash
# A real single-node SLURM (slurmctld + slurmd + munged on localhost) for tests and demos.
#
#   slurm/local-cluster.sh start    # start (idempotent); prints: export SLURM_CONF=...
#   slurm/local-cluster.sh status   # daemons and sinfo
#   slurm/local-cluster.sh env      # print the export line again
#   slurm/local-cluster.sh stop     # stop the daemons this script started (by their pid files)
#
# Needs Debian/Ubuntu `slurm-wlm` and `munge` (apt-get install -y slurm-wlm munge) and root (slurmd
# launches jobs). Nothing outside the state directory is touched: the configuration, munge key and
# socket, spool, logs and pid files live in $XMM_SLURM_DIR (default /tmp/xmm-survey-slurm-<uid>,
# mode 700). Clients find this cluster through SLURM_CONF=$XMM_SLURM_DIR/slurm.conf.
set -euo pipefail

STATE="${XMM_SLURM_DIR:-/tmp/xmm-survey-slurm-$(id -u)}"
CONF="$STATE/slurm.conf"
MUNGE="$STATE/munge"
PARTITION="${XMM_SLURM_PARTITION:-debug}"

die() { echo "local-cluster.sh: $*" >&2; exit 1; }

need() {
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool not found: apt-get install -y slurm-wlm munge"
    done
}

alive() {  # alive PIDFILE -> 0 if the process in it runs
    [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

write_conf() {
    local cpus mem
    cpus="$(nproc)"
    mem="$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)"
    cat >"$CONF.tmp" <<EOF
# written by slurm/local-cluster.sh; single node, state in $STATE
ClusterName=xmmlocal
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE/munge.socket.2
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldPort=${XMM_SLURMCTLD_PORT:-6817}
SlurmdPort=${XMM_SLURMD_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SchedulerParameters=batch_sched_delay=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
MpiDefault=none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

print_env() {
    echo "export SLURM_CONF=$CONF"
}

start() {
    need munged mungekey slurmctld slurmd sinfo sbatch
    [[ "$(id -u)" == 0 ]] || die "must run as root (slurmd starts jobs); state would be in $STATE"
    mkdir -p "$STATE"
    chmod 700 "$STATE"
    mkdir -p "$STATE/state" "$STATE/spool" "$MUNGE"
    chmod 755 "$MUNGE"
    if ! alive "$MUNGE/munged.pid"; then
        [[ -s "$MUNGE/munge.key" ]] || mungekey --create --keyfile "$MUNGE/munge.key" --force >/dev/null
        chmod 600 "$MUNGE/munge.key"
        munged --socket "$MUNGE/munge.socket.2" --key-file "$MUNGE/munge.key" \
            --pid-file "$MUNGE/munged.pid" --log-file "$MUNGE/munged.log" --seed-file "$MUNGE/seed" -f
    fi
    write_conf
    export SLURM_CONF="$CONF"
    alive "$STATE/slurmctld.pid" || slurmctld -f "$CONF"
    alive "$STATE/slurmd.pid" || slurmd -f "$CONF" -N localhost
    local i state
    for i in $(seq 1 60); do
        state="$(sinfo -h -N -o '%T' 2>/dev/null | head -n1 || true)"
        if [[ "$state" == idle* || "$state" == mixed* || "$state" == allocated* ]]; then
            echo "SLURM is up (node localhost: $state; state in $STATE)" >&2
            print_env
            return 0
        fi
        if [[ "$state" == down* || "$state" == drain* ]]; then
            scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true
        fi
        sleep 0.5
    done
    echo "--- slurmctld.log" >&2; tail -n 20 "$STATE/slurmctld.log" >&2 || true
    echo "--- slurmd.log" >&2; tail -n 20 "$STATE/slurmd.log" >&2 || true
    die "the node did not become idle within 30 s (logs above)"
}

stop_one() {  # stop_one PIDFILE NAME
    local pidfile="$1" name="$2" pid i
    if alive "$pidfile"; then
        pid="$(cat "$pidfile")"
        kill "$pid" 2>/dev/null || true
        for i in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid" 2>/dev/null || true
        fi
        echo "stopped $name ($pid)" >&2
    fi
    rm -f "$pidfile"
}

stop() {
    if [[ -f "$CONF" ]] && command -v scancel >/dev/null 2>&1 && alive "$STATE/slurmctld.pid"; then
        SLURM_CONF="$CONF" scancel --partition="$PARTITION" >/dev/null 2>&1 || true
    fi
    stop_one "$STATE/slurmd.pid" slurmd
    stop_one "$STATE/slurmctld.pid" slurmctld
    stop_one "$MUNGE/munged.pid" munged
}

status() {
    local rc=0 f
    for f in "$MUNGE/munged.pid" "$STATE/slurmctld.pid" "$STATE/slurmd.pid"; do
        if alive "$f"; then echo "$(basename "$f" .pid): running ($(cat "$f"))"; else echo "$(basename "$f" .pid): stopped"; rc=3; fi
    done
    if [[ $rc == 0 ]]; then
        SLURM_CONF="$CONF" sinfo -N
        print_env
    fi
    return $rc
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) print_env ;;
    *) echo "usage: $0 start|stop|status|env   (state in $STATE)" >&2; exit 2 ;;
esac
