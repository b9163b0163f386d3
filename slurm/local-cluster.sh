#!/usr/bin/env bash
# A real SLURM on this machine (slurmctld + slurmd + munged) for tests and demos: one node, or several
# slurmd daemons that are each their own node (XMM_SLURM_NODES=3).
#
#   slurm/local-cluster.sh start              # start (idempotent); prints: export SLURM_CONF=...
#   slurm/local-cluster.sh status             # daemons and sinfo
#   slurm/local-cluster.sh env                # print the export line again
#   slurm/local-cluster.sh nodes              # "name address" per node (also $XMM_SLURM_DIR/nodes.txt)
#   slurm/local-cluster.sh kill-node NAME     # end that node's slurmd and every process of its jobs
#   slurm/local-cluster.sh revive-node NAME   # start its slurmd again and return it to service
#   slurm/local-cluster.sh stop               # stop the daemons this script started (by pid files)
#
# Several nodes (XMM_SLURM_NODES=N, 2..99): Debian's slurm-wlm 22.05 runs several slurmd daemons on
# one host when each has its own node name (`slurmd -N xmm-n2`), its own port (`NodeName=... Port=`)
# and its own spool, pid and log files (`%n` in slurm.conf). Node i is `xmm-n<i>` with the loopback
# address 127.0.0.<10+i> (NodeAddr, where slurmctld reaches it) and slurmd port XMM_SLURMD_PORT+i;
# each has XMM_SLURM_CPUS_PER_NODE CPUs (default 1) and XMM_SLURM_MEM_PER_NODE MB (default 2000).
# Jobs see their node in SLURMD_NODENAME; nodes.txt maps names to addresses so that a Dask worker can
# listen on its node's address (`--host $XMM_NODE_ADDR`). All traffic stays on 127.0.0.0/8.
# A node is lost with kill-node (SIGKILL to its slurmd, the slurmstepd of its jobs and every process
# that carries SLURMD_NODENAME=<node> and this SLURM_CONF): slurmctld marks it DOWN after
# SlurmdTimeout (10 s here) and its jobs end as NODE_FAIL.
# (One network namespace per node works on these machines too, but needs a veth pair, addresses and
# routes per node; per-node ports need nothing beyond slurm.conf, so that is the recipe used here.)
#
# Needs Debian/Ubuntu `slurm-wlm` and `munge` (apt-get install -y slurm-wlm munge) and root (slurmd
# launches jobs). Nothing outside the state directory is touched: the configuration, munge key and
# socket, spool, logs and pid files live in $XMM_SLURM_DIR (default /tmp/xmm-survey-slurm-<uid>,
# mode 700). Clients find this cluster through SLURM_CONF=$XMM_SLURM_DIR/slurm.conf.
# Ports: XMM_SLURMCTLD_PORT (slurmctld) and XMM_SLURMD_PORT (slurmd; node i of several: +i) when set
# (refused if one is in use); unset, `start` takes 6817/6818 if free, else a free block at random in
# 20000-40000, and keeps it in $XMM_SLURM_DIR/ports for the next start. Two clusters may run at once
# (two test runs): the choice and the daemons' bind are done under flock on $XMM_SLURM_PORTS_LOCK
# (default /tmp/xmm-survey-slurm-ports.lock, the one file outside the state dir), so a second start
# waits for the first with a message instead of taking the same ports.
set -euo pipefail

STATE="${XMM_SLURM_DIR:-/tmp/xmm-survey-slurm-$(id -u)}"
CONF="$STATE/slurm.conf"
MUNGE="$STATE/munge"
PARTITION="${XMM_SLURM_PARTITION:-debug}"
NODES="${XMM_SLURM_NODES:-1}"
# ports: XMM_SLURMCTLD_PORT / XMM_SLURMD_PORT when given; otherwise chosen free at start (see pick_ports)
CTLD_PORT="${XMM_SLURMCTLD_PORT:-}"
SLURMD_PORT="${XMM_SLURMD_PORT:-}"
PORTS_LOCK="${XMM_SLURM_PORTS_LOCK:-/tmp/xmm-survey-slurm-ports.lock}"

die() { echo "local-cluster.sh: $*" >&2; exit 1; }

[[ "$NODES" =~ ^[1-9][0-9]?$ ]] || { echo "local-cluster.sh: XMM_SLURM_NODES must be 1-99, got '$NODES'" >&2; exit 2; }

need() {
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool not found: apt-get install -y slurm-wlm munge"
    done
}

alive() {  # alive PIDFILE -> 0 if the process in it runs
    [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

node_names() {  # the node names, one a line
    local i
    if [[ "$NODES" == 1 ]]; then echo localhost; return; fi
    for i in $(seq 1 "$NODES"); do echo "xmm-n$i"; done
}

node_addr() {  # node_addr NAME -> its loopback address
    if [[ "$1" == localhost ]]; then echo 127.0.0.1; else echo "127.0.0.$((10 + ${1#xmm-n}))"; fi
}

pidfile_of() {  # pidfile_of NAME -> the slurmd pid file of that node
    if [[ "$NODES" == 1 ]]; then echo "$STATE/slurmd.pid"; else echo "$STATE/slurmd-$1.pid"; fi
}

write_conf() {
    local cpus mem name i nodelist=""
    if [[ "$NODES" == 1 ]]; then
        cpus="$(nproc)"
        mem="$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)"
    else
        cpus="${XMM_SLURM_CPUS_PER_NODE:-1}"
        mem="${XMM_SLURM_MEM_PER_NODE:-2000}"
    fi
    {
        echo "# written by slurm/local-cluster.sh; $NODES node(s), state in $STATE"
        cat <<EOF
ClusterName=xmmlocal
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE/munge.socket.2
StateSaveLocation=$STATE/state
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
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
EOF
        if [[ "$NODES" == 1 ]]; then
            cat <<EOF
SlurmdSpoolDir=$STATE/spool
SlurmdPidFile=$STATE/slurmd.pid
SlurmdLogFile=$STATE/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
        else
            # one slurmd per node on this host: per-node spool/pid/log (%n) and port; a lost node is
            # noticed within SlurmdTimeout; a short KillWait makes walltime kills quick
            cat <<EOF
SlurmdSpoolDir=$STATE/spool/%n
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmdLogFile=$STATE/slurmd-%n.log
SlurmdTimeout=10
KillWait=5
EOF
            for i in $(seq 1 "$NODES"); do
                name="xmm-n$i"
                echo "NodeName=$name NodeHostname=localhost NodeAddr=$(node_addr "$name") Port=$((SLURMD_PORT + i)) CPUs=$cpus RealMemory=$mem State=UNKNOWN"
                nodelist="${nodelist:+$nodelist,}$name"
            done
            echo "PartitionName=$PARTITION Nodes=$nodelist Default=YES MaxTime=INFINITE State=UP"
        fi
    } >"$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
    for name in $(node_names); do echo "$name $(node_addr "$name")"; done >"$STATE/nodes.txt.tmp"
    mv "$STATE/nodes.txt.tmp" "$STATE/nodes.txt"
}

own_daemon_alive() {  # 0 if slurmctld or a slurmd of this state dir runs
    local name
    alive "$STATE/slurmctld.pid" && return 0
    for name in $(node_names); do alive "$(pidfile_of "$name")" && return 0; done
    return 1
}

port_used() {  # port_used PORT -> 0 if something listens on it (any address)
    ss -Htln "sport = :$1" 2>/dev/null | grep -q .
}

block_free() {  # block_free CTLD SLURMD: the controller port and every slurmd port of this cluster are free
    local p
    port_used "$1" && return 1
    if [[ "$NODES" == 1 ]]; then ! port_used "$2"; return; fi
    for p in $(seq $(($2 + 1)) $(($2 + NODES))); do port_used "$p" && return 1; done
    return 0
}

pick_ports() {  # sets CTLD_PORT and SLURMD_PORT: given, kept from this state dir's last start, or free ones
    local base tries
    if [[ -n "$CTLD_PORT" || -n "$SLURMD_PORT" ]]; then  # given: used as they are, refused if taken
        CTLD_PORT="${CTLD_PORT:-6817}"
        SLURMD_PORT="${SLURMD_PORT:-6818}"
        block_free "$CTLD_PORT" "$SLURMD_PORT" ||
            die "XMM_SLURMCTLD_PORT=$CTLD_PORT / XMM_SLURMD_PORT=$SLURMD_PORT (+1..$NODES): a port is in use (another cluster?); unset both to get free ones"
        return 0
    fi
    if [[ -s "$STATE/ports" ]]; then
        read -r CTLD_PORT SLURMD_PORT <"$STATE/ports"
        block_free "$CTLD_PORT" "$SLURMD_PORT" && return 0
    fi
    CTLD_PORT=6817 SLURMD_PORT=6818
    for tries in $(seq 1 200); do
        block_free "$CTLD_PORT" "$SLURMD_PORT" && { echo "$CTLD_PORT $SLURMD_PORT" >"$STATE/ports"; return 0; }
        base=$((20000 + RANDOM % 20000))
        CTLD_PORT=$base SLURMD_PORT=$((base + 1))
    done
    die "no free block of $((NODES + 2)) ports found in 20000-40000"
}

print_env() {
    echo "export SLURM_CONF=$CONF"
}

wait_up() {  # wait_up TRIES [NODE...]: every (given) node idle/mixed/allocated; 1 on timeout
    local tries="$1" i name state ok
    shift
    local want=("$@")
    [[ ${#want[@]} -gt 0 ]] || mapfile -t want < <(node_names)
    for i in $(seq 1 "$tries"); do
        ok=1
        for name in "${want[@]}"; do
            state="$(sinfo -h -n "$name" -N -o '%T' 2>/dev/null | head -n1 || true)"
            if [[ "$state" == down* || "$state" == drain* ]]; then
                scontrol update NodeName="$name" State=RESUME >/dev/null 2>&1 || true
            fi
            [[ "$state" == idle* || "$state" == mixed* || "$state" == allocated* ]] || ok=0
        done
        if [[ $ok == 1 ]]; then
            echo "SLURM is up (${#want[@]} node(s): ${want[*]}; state in $STATE)" >&2
            return 0
        fi
        sleep 0.5
    done
    return 1
}

start() {
    need munged mungekey slurmctld slurmd sinfo sbatch
    [[ "$(id -u)" == 0 ]] || die "must run as root (slurmd starts jobs); state would be in $STATE"
    mkdir -p "$STATE"
    chmod 700 "$STATE"
    mkdir -p "$STATE/state" "$STATE/spool" "$MUNGE"
    chmod 755 "$MUNGE"
    local name
    if own_daemon_alive && [[ -s "$STATE/ports" ]]; then  # (partly) running: keep its ports
        read -r CTLD_PORT SLURMD_PORT <"$STATE/ports"
    else
        # Two clusters started at once (two test runs) must not pick the same free ports: the choice and
        # the daemons' bind happen under one lock; a second start waits for the first (a few seconds).
        exec 9>>"$PORTS_LOCK"
        if ! flock -n 9; then
            echo "local-cluster.sh: another local cluster is starting ($PORTS_LOCK); waiting for it to bind its ports" >&2
            flock -w 120 9 || die "waited 120 s for $PORTS_LOCK (held by another local-cluster.sh start)"
        fi
        pick_ports
        echo "$CTLD_PORT $SLURMD_PORT" >"$STATE/ports"
    fi
    if ! alive "$MUNGE/munged.pid"; then
        [[ -s "$MUNGE/munge.key" ]] || mungekey --create --keyfile "$MUNGE/munge.key" --force >/dev/null
        chmod 600 "$MUNGE/munge.key"
        munged --socket "$MUNGE/munge.socket.2" --key-file "$MUNGE/munge.key" \
            --pid-file "$MUNGE/munged.pid" --log-file "$MUNGE/munged.log" --seed-file "$MUNGE/seed" -f 9>&-
    fi
    write_conf
    export SLURM_CONF="$CONF"
    # the daemons must not inherit the lock's descriptor (they would hold the lock for their lifetime)
    alive "$STATE/slurmctld.pid" || slurmctld -f "$CONF" 9>&-
    for name in $(node_names); do
        [[ "$NODES" == 1 ]] || mkdir -p "$STATE/spool/$name"
        alive "$(pidfile_of "$name")" || slurmd -f "$CONF" -N "$name" 9>&-
    done
    if wait_up 60; then
        exec 9>&-
        print_env
        return 0
    fi
    echo "--- slurmctld.log" >&2; tail -n 20 "$STATE/slurmctld.log" >&2 || true
    echo "--- slurmd log(s)" >&2; tail -n 10 "$STATE"/slurmd*.log >&2 || true
    die "not every node became idle within 30 s (logs above)"
}

known_node() {
    local name
    for name in $(node_names); do [[ "$name" == "$1" ]] && return 0; done
    die "no node '$1' in this cluster (nodes: $(node_names | tr '\n' ' '))"
}

node_pids() {  # node_pids NAME: its slurmd, every process of its jobs, and their slurmstepd
    local name="$1" f pid ppid
    if alive "$(pidfile_of "$name")"; then cat "$(pidfile_of "$name")"; fi
    # a job process of this node carries the node name and this cluster's SLURM_CONF in its environment
    for f in $(grep -l -s -z -x -F "SLURMD_NODENAME=$name" /proc/[0-9]*/environ 2>/dev/null || true); do
        grep -q -s -z -x -F "SLURM_CONF=$CONF" "$f" 2>/dev/null || continue
        pid="${f#/proc/}"
        pid="${pid%/environ}"
        [[ "$pid" == "$$" || "$pid" == "$BASHPID" ]] && continue
        echo "$pid"
        ppid="$(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null || true)"
        if [[ -n "$ppid" && "$(cat "/proc/$ppid/comm" 2>/dev/null || true)" == slurmstepd ]]; then
            echo "$ppid"
        fi
    done | sort -un
}

kill_node() {
    local name="${1:?usage: local-cluster.sh kill-node NAME}" pids=()
    [[ -f "$CONF" ]] || die "no cluster in $STATE"
    known_node "$name"
    mapfile -t pids < <(node_pids "$name")
    if [[ ${#pids[@]} -gt 0 ]]; then kill -9 "${pids[@]}" 2>/dev/null || true; fi
    rm -f "$(pidfile_of "$name")"
    echo "killed node $name: ${#pids[@]} process(es): ${pids[*]}" >&2
}

revive_node() {
    local name="${1:?usage: local-cluster.sh revive-node NAME}"
    [[ -f "$CONF" ]] || die "no cluster in $STATE"
    known_node "$name"
    export SLURM_CONF="$CONF"
    alive "$(pidfile_of "$name")" || slurmd -f "$CONF" -N "$name"
    scontrol update NodeName="$name" State=RESUME >/dev/null 2>&1 || true
    wait_up 60 "$name" || die "node $name did not come back within 30 s"
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
    local name
    for name in $(node_names); do stop_one "$(pidfile_of "$name")" "slurmd $name"; done
    stop_one "$STATE/slurmctld.pid" slurmctld
    stop_one "$MUNGE/munged.pid" munged
}

status() {
    local rc=0 f name
    for f in "$MUNGE/munged.pid" "$STATE/slurmctld.pid" $(for name in $(node_names); do pidfile_of "$name"; done); do
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
    nodes) for n in $(node_names); do echo "$n $(node_addr "$n")"; done ;;
    kill-node) kill_node "${2:-}" ;;
    revive-node) revive_node "${2:-}" ;;
    *) echo "usage: $0 start|stop|status|env|nodes|kill-node NAME|revive-node NAME   (state in $STATE)" >&2; exit 2 ;;
esac
