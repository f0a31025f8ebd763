#!/usr/bin/env bash
# Start a throw-away single-node SLURM cluster (munged, slurmctld, slurmd) whose files all live in DIR.
#
#   sudo slurm/local-cluster/start.sh DIR [CPUS]     then: export SLURM_CONF=DIR/slurm.conf
#   sudo slurm/local-cluster/stop.sh DIR             stops what start.sh started (by pid) and deletes DIR
#
# For trying the sbatch scripts and for the tests; not a production set-up. Needs root and Debian's Slurm:
#   apt-get install -y --no-install-recommends slurmctld slurmd     (pulls in munge)
# It runs without systemd or cgroups (proctrack/linuxproc, task/none), on ports picked free at start, with
# munge authentication under its own key and socket. A requeued job normally waits cred_expire + 1 s
# (default 121 s) before it runs again; here cred_expire=5 and a 1 s scheduler tick make that about 6 s.
# Exit status: 0 started; 2 usage; 3 cannot run here (not root, Slurm or munge missing); 1 failed to start.
set -euo pipefail

usage() { echo "usage: $0 DIR [CPUS]   (DIR must not exist or be empty)" >&2; exit 2; }
cannot() { echo "local-cluster: cannot start: $*" >&2; exit 3; }
fail() {
    echo "local-cluster: failed to start: $*" >&2
    for log in "$DIR"/log/*.log; do [ -f "$log" ] && { echo "--- $log" >&2; tail -n 20 "$log" >&2; }; done
    echo "local-cluster: run $(dirname "$0")/stop.sh $DIR to stop what did start" >&2
    exit 1
}

[ $# -ge 1 ] && [ $# -le 2 ] || usage
[ "$(id -u)" = 0 ] || cannot "needs root (slurmd starts job steps as the submitting user)"
for tool in munged mungekey slurmctld slurmd sbatch scontrol squeue scancel python3; do
    command -v "$tool" >/dev/null || cannot "'$tool' is not installed (apt-get install -y --no-install-recommends slurmctld slurmd)"
done

DIR=$1
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
[ -z "$(ls -A "$DIR")" ] || usage
chmod 0711 "$DIR"  # munged wants every folder above its socket enterable by all
touch "$DIR/.diffaug-local-cluster"  # stop.sh deletes only folders that carry this mark
mkdir -p "$DIR"/{state,spool,log,run,munge}
chmod 0700 "$DIR"/{state,spool,run}
chmod 0711 "$DIR/munge"  # munged refuses a socket folder that others can write to or cannot enter

# Node shape as slurmd sees it; RealMemory at 90 %: the full amount drains the node ("Low RealMemory").
read -r -a HW <<<"$(slurmd -C | head -n 1)"
CPUS=${2:-}
SHAPE=""
for field in "${HW[@]}"; do
    case "$field" in
        CPUs=*) [ -n "$CPUS" ] || CPUS=${field#CPUs=} ;;
        Boards=*|SocketsPerBoard=*|CoresPerSocket=*|ThreadsPerCore=*) SHAPE="$SHAPE $field" ;;
        RealMemory=*) MEMORY=$(( ${field#RealMemory=} * 9 / 10 )) ;;
    esac
done
[ -n "${2:-}" ] && SHAPE=""  # an explicit CPU count replaces the detected topology
# Free ports, and a random first job id: Lightning derives its DDP port from the job id's last four digits,
# so two clusters on one machine that both count from 1 would give their jobs the same port.
read -r CTLD_PORT SLURMD_PORT FIRST_JOB_ID < <(python3 -c '
import random, socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks), random.randrange(10000, 90000))')

mungekey --create --keyfile="$DIR/munge/munge.key" --force >/dev/null
chmod 0400 "$DIR/munge/munge.key"

cat >"$DIR/slurm.conf" <<CONF
ClusterName=diffaug-local
FirstJobId=$FIRST_JOB_ID
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=5
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=bf_interval=1,sched_interval=1
MpiDefault=none
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS$SHAPE RealMemory=$MEMORY State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
export SLURM_CONF=$DIR/slurm.conf

# A daemon keeps every descriptor it inherits: a caller reading our output would wait for it to exit, and
# an inherited lock would stay held. So each starts with stdio on files and every other descriptor closed.
daemon() {
    (
        for fd in /proc/"$BASHPID"/fd/*; do
            fd=${fd##*/}
            [ "$fd" -gt 2 ] && eval "exec $fd>&-"
        done
        exec "$@" </dev/null >>"$DIR/log/start.log" 2>&1
    )
}
daemon munged --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" \
    || fail "munged did not start"
daemon slurmctld -c || fail "slurmctld did not start"
daemon slurmd -N localhost || fail "slurmd did not start"

for _ in $(seq 1 150); do
    state=$(scontrol show node localhost 2>/dev/null | sed -n 's/.*State=\([A-Z+_]*\).*/\1/p' | head -n 1)
    if [ "$state" = IDLE ]; then
        echo "export SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 0.2
done
fail "node not idle after 30 s (state: ${state:-unknown})"
