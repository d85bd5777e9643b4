#!/bin/sh
# A real single-node SLURM cluster for the tests (tests/check_slurm.c), everything in one
# directory: its own munge key and munged socket, slurm.conf, state, spool, logs and pid
# files, on free TCP ports, so it neither needs nor touches a system SLURM or munge.
#
#   tools/slurm-cluster.sh start DIR   DIR absent or empty; prints SLURM_CONF=DIR/slurm.conf
#   tools/slurm-cluster.sh stop DIR    cancels the jobs, stops the daemons, removes DIR
#
# With SLURM_CONF=DIR/slurm.conf in the environment, sbatch, squeue, scancel and scontrol
# talk to this cluster: slurm.conf names the munged socket (AuthInfo=socket=...), so
# clients and daemons authenticate through this munged and this key only.
#
# Must run as root (slurmd starts jobs as their users). Debian 12: slurmctld, slurmd,
# slurm-client and munge (tools/install-deps.sh installs them). No cgroups needed
# (proctrack/linuxproc, task/none), no accounting daemon (accounting_storage/none; the
# finished jobs are logged to DIR/jobcomp.log by jobcomp/filetxt). One node, named as
# `hostname -s`, with the CPUs and memory `slurmd -C` finds; select/cons_tres with CR_CPU,
# so two 1-CPU tasks run at once on 2 CPUs.
set -u
cmd="${1:-}"
dir="${2:-}"
me="slurm-cluster"

die() { echo "$me: $*" >&2; exit 1; }

[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 start|stop DIR"
case "$dir" in /*) ;; *) dir="$(pwd)/$dir" ;; esac
MARK="$dir/.moelab-slurm-cluster"

# Ports nobody listens on: /proc/net/tcp{,6} (no ss/netstat needed), from a range above
# the usual services, varied by our pid so two clusters started together differ.
used_ports() {
    cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
        awk 'NR > 1 && $4 == "0A" { split($2, a, ":"); print a[2] }' |
        while read -r h; do printf '%d\n' "0x$h"; done
}
free_port() { # $1: a port to avoid as well
    used=$(used_ports)
    p=$((20000 + ($$ * 7 + ${2:-0} * 131) % 20000))
    n=0
    while [ $n -lt 2000 ]; do
        if [ "$p" != "$1" ] && ! echo "$used" | grep -qx "$p"; then echo "$p"; return 0; fi
        p=$((p + 1)); [ $p -ge 40000 ] && p=20000
        n=$((n + 1))
    done
    return 1
}

tail_logs() {
    for f in "$dir/log/munged.log" "$dir/log/slurmctld.log" "$dir/log/slurmd.log" "$dir/log/munged.out" \
             "$dir/log/slurmctld.out" "$dir/log/slurmd.out"; do
        [ -s "$f" ] || continue
        echo "---- tail of $f" >&2
        tail -n 15 "$f" >&2
    done
}

pid_of() { [ -s "$dir/run/$1.pid" ] && cat "$dir/run/$1.pid" 2>/dev/null; }
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# Ends a daemon by its pid file: TERM, then KILL after 10 s.
stop_daemon() {
    pid=$(pid_of "$1")
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null
    n=0
    while alive "$pid" && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null
    return 0
}

# Processes that still have a file, their cwd or their executable under $dir (job steps:
# slurmstepd and what it started, which outlive slurmd): killed by pid, nothing by name.
stragglers() {
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        [ "$pid" = $$ ] && continue
        for f in "$p"/cwd "$p"/fd/*; do
            t=$(readlink "$f" 2>/dev/null) || continue
            case "$t" in "$dir"/*|"$dir") echo "$pid"; break ;; esac
        done
    done
}

stop() {
    [ -d "$dir" ] || return 0
    [ -f "$MARK" ] || die "$dir was not made by $0 start (no $MARK); not touching it"
    export SLURM_CONF="$dir/slurm.conf"
    if alive "$(pid_of slurmctld)"; then
        # cancel every job; give their processes the KillWait to save and exit
        scancel --quiet --user="$(id -un)" >/dev/null 2>&1
        n=0
        while [ $n -lt 60 ] && [ -n "$(squeue --noheader --format=%i 2>/dev/null)" ]; do sleep 0.25; n=$((n + 1)); done
    fi
    stop_daemon slurmd
    stop_daemon slurmctld
    for pid in $(stragglers); do kill -KILL "$pid" 2>/dev/null; done
    stop_daemon munged
    sleep 0.2
    for pid in $(stragglers); do kill -KILL "$pid" 2>/dev/null; done
    rm -rf "$dir"
}

fail_start() {
    echo "$me: $*" >&2
    tail_logs
    stop
    exit 1
}

start() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (slurmd starts jobs as their users)"
    for p in munged slurmctld slurmd sbatch squeue scontrol sinfo scancel; do
        command -v "$p" >/dev/null 2>&1 || [ -x "/usr/sbin/$p" ] ||
            die "$p is not installed (Debian: MOELAB_SLURM=1 sh tools/install-deps.sh installs slurmctld slurmd slurm-client munge)"
    done
    PATH="$PATH:/usr/sbin:/sbin"
    if [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ]; then die "$dir is not empty"; fi
    mkdir -p "$dir" || die "cannot create $dir"
    chmod 0755 "$dir"
    : >"$MARK"
    mkdir -p "$dir/munge" "$dir/munge-key" "$dir/state" "$dir/spool" "$dir/log" "$dir/run" "$dir/tmp" ||
        fail_start "cannot create the directories under $dir"
    chmod 0755 "$dir/munge"   # the socket, for every user's commands
    chmod 0700 "$dir/munge-key" "$dir/state" "$dir/spool"
    chmod 1777 "$dir/tmp"

    # munge: a fresh key and a socket of our own
    dd if=/dev/urandom of="$dir/munge-key/munge.key" bs=1024 count=1 2>/dev/null || fail_start "cannot write the munge key"
    chmod 0400 "$dir/munge-key/munge.key"
    sock="$dir/munge/munge.socket"
    munged --force --socket="$sock" --key-file="$dir/munge-key/munge.key" --pid-file="$dir/run/munged.pid" \
        --log-file="$dir/log/munged.log" --seed-file="$dir/munge-key/munged.seed" >"$dir/log/munged.out" 2>&1 ||
        fail_start "munged did not start"
    n=0
    while [ ! -S "$sock" ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
    [ -S "$sock" ] || fail_start "munged did not create its socket $sock"
    if command -v munge >/dev/null 2>&1; then
        munge --socket="$sock" -n 2>"$dir/log/munge-test.out" | unmunge --socket="$sock" >/dev/null 2>>"$dir/log/munge-test.out" ||
            fail_start "munge cannot encode and decode a credential: $(cat "$dir/log/munge-test.out")"
    fi

    # the node as slurmd sees it (CPUs, sockets, cores, threads, memory)
    node=$(hostname -s)
    line=$(slurmd -C 2>/dev/null | head -n 1)
    case "$line" in
        NodeName=*) hw=${line#NodeName=* } ;;
        *) hw="CPUs=$(nproc) RealMemory=$(awk '/MemTotal/ { print int($2 / 1024) }' /proc/meminfo)" ;;
    esac
    ctld_port=$(free_port 0 1) || fail_start "no free TCP port for slurmctld"
    slurmd_port=$(free_port "$ctld_port" 2) || fail_start "no free TCP port for slurmd"

    cat >"$dir/slurm.conf" <<EOF
# written by tools/slurm-cluster.sh: a single-node test cluster, everything under $dir
ClusterName=moelabtest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
TmpFS=$dir/tmp
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# start queued tasks as soon as CPUs free up (the default waits up to 3 s)
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000
MpiDefault=none
SwitchType=switch/none
LaunchType=launch/slurm
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.log
JobRequeue=1
ReturnToService=2
KillWait=15
MinJobAge=300
InactiveLimit=0
SlurmdTimeout=60
MessageTimeout=10
MaxArraySize=10001
NodeName=$node NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=test Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$SLURM_CONF" -c -i >"$dir/log/slurmctld.out" 2>&1 || fail_start "slurmctld did not start"
    slurmd -f "$SLURM_CONF" -N "$node" >"$dir/log/slurmd.out" 2>&1 || fail_start "slurmd did not start"
    # ready when the node is idle (slurmd registered and the controller accepts it)
    n=0
    state=""
    while [ $n -lt 150 ]; do
        state=$(sinfo --noheader --nodes="$node" --format=%T 2>/dev/null | head -n 1)
        case "$state" in idle) break ;; esac
        alive "$(pid_of slurmctld)" || fail_start "slurmctld exited while starting"
        alive "$(pid_of slurmd)" || fail_start "slurmd exited while starting"
        sleep 0.2
        n=$((n + 1))
    done
    [ "$state" = idle ] || fail_start "node $node is '${state:-not listed}' after 30 s, expected idle (sinfo: $(sinfo 2>&1 | tail -n 3))"
    echo "SLURM_CONF=$SLURM_CONF"
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    *) die "usage: $0 start|stop DIR" ;;
esac
