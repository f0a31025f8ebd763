#!/usr/bin/env bash
# Stop the cluster that start.sh started in DIR and delete DIR (its state too: Slurm would otherwise re-run
# the saved jobs on the next start). Only processes named by DIR's pid files and their jobs are signalled.
#
#   slurm/local-cluster/stop.sh DIR
set -uo pipefail

[ $# = 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
DIR=$(cd "$1" 2>/dev/null && pwd) || { echo "local-cluster: $1 does not exist; nothing to stop" >&2; exit 0; }
[ -f "$DIR/.diffaug-local-cluster" ] || { echo "local-cluster: $DIR was not made by start.sh; left alone" >&2; exit 2; }
export SLURM_CONF=$DIR/slurm.conf

# Alive = exists and is not a zombie (killed processes here can stay zombies until PID 1 reaps them).
alive() {
    local state
    state=$(sed -n 's/^[0-9]* (.*) \([A-Z]\) .*/\1/p' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

wait_gone() {  # PID SECONDS
    local i
    for i in $(seq 1 $(( $2 * 10 ))); do alive "$1" || return 0; sleep 0.1; done
    return 1
}

# Jobs first, while slurmctld and slurmd still run: their steps are not children of the daemons and would
# outlive them. Cancelled jobs get SIGTERM, then SIGKILL after KillWait (5 s).
if [ -f "$DIR/run/slurmctld.pid" ] && alive "$(cat "$DIR/run/slurmctld.pid")"; then
    jobs=$(squeue --noheader --format=%A 2>/dev/null | sort -u)
    if [ -n "$jobs" ]; then
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null
        for _ in $(seq 1 150); do
            [ -z "$(squeue --noheader --format=%A 2>/dev/null)" ] && break
            sleep 0.1
        done
    fi
fi
# Whatever is left of job steps runs under slurmstepd processes; listpids names their pids.
if [ -f "$DIR/run/slurmd.pid" ] && alive "$(cat "$DIR/run/slurmd.pid")"; then
    for pid in $(scontrol listpids 2>/dev/null | awk 'NR > 1 && $1 ~ /^[0-9]+$/ {print $1}'); do
        kill -KILL "$pid" 2>/dev/null
    done
fi

status=0
for daemon in slurmd slurmctld munged; do
    file=$DIR/run/$daemon.pid
    [ -f "$file" ] || continue
    pid=$(cat "$file")
    alive "$pid" || continue
    kill -TERM "$pid" 2>/dev/null
    if ! wait_gone "$pid" 10; then
        kill -KILL "$pid" 2>/dev/null
        wait_gone "$pid" 5 || { echo "local-cluster: $daemon (pid $pid) does not stop" >&2; status=1; }
    fi
done
# slurmstepd processes of killed steps exit on their own once their tasks are gone.
[ "$status" = 0 ] && rm -rf "$DIR"
exit "$status"
