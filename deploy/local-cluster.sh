#!/usr/bin/env bash
# A one-node SLURM cluster and a PostgreSQL-backed MLflow server on this machine, for the sweep:
#
#   deploy/local-cluster.sh up [DIR]       # install what is missing, start, wait until healthy, print what to use
#   deploy/local-cluster.sh status [DIR]   # what runs, on which ports
#   deploy/local-cluster.sh down [DIR]     # stop exactly what `up` started (PID files in DIR)
#
# DIR (default .cluster/ in the repository, git-ignored) holds every config, key, data directory, log
# and PID file; nothing is written under /etc. Ports are picked free at the first `up` and kept in
# DIR/ports.env; a second `up` reuses what runs. Needs root (munged, slurmd and apt-get); PostgreSQL
# runs as the user `postgres`. QUANTGATE_PYTHON names the Python that runs `mlflow server` (default:
# the repository's .venv). Exit codes: 0 done, 2 bad use (not root, unknown action, a daemon not
# healthy in time), 4 a prerequisite cannot be installed here.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
ACTION=${1:-status}
DIR=$(mkdir -p "${2:-$REPO/.cluster}" && cd "${2:-$REPO/.cluster}" && pwd)
PYTHON=${QUANTGATE_PYTHON:-$REPO/.venv/bin/python}
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
PG_USER=postgres
HOST=$(hostname -s)
export SLURM_CONF=$DIR/slurm.conf

say() { echo "local-cluster: $*" >&2; }
die() { say "error: $*"; exit 2; }
missing() { say "cannot install: $*"; exit 4; }  # a prerequisite this machine cannot get

alive() {  # alive PIDFILE: the process the file names is running
    [[ -s $1 ]] && kill -0 "$(head -n 1 "$1" 2>/dev/null)" 2>/dev/null
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...: retry COMMAND once a second until it succeeds
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq "$seconds"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 1
    done
    die "$what did not become healthy within ${seconds}s (logs in $DIR)"
}

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

install_missing() {
    [[ $(id -u) == 0 ]] || die "run as root: munged, slurmctld and slurmd run as root here"
    if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
            || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
        say "installing slurmctld slurmd slurmdbd munge mariadb-server (apt-get)"
        apt-get install -y -q --no-install-recommends slurmctld slurmd slurmdbd slurm-client munge mariadb-server \
            >/dev/null || missing "apt-get could not install slurmctld slurmd slurmdbd munge mariadb-server"
    fi
    if [[ -z $PG_BIN ]]; then
        say "installing postgresql (apt-get)"
        apt-get install -y -q --no-install-recommends postgresql >/dev/null || missing "apt-get could not install postgresql"
        PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi
    [[ -x $PYTHON ]] || die "no Python at $PYTHON: set QUANTGATE_PYTHON to the project's environment"
    if ! "$PYTHON" -c "import psycopg" 2>/dev/null; then
        say "installing the PostgreSQL driver (pip: psycopg[binary], the 'cluster' extra)"
        "$PYTHON" -m pip install -q -c "$REPO/constraints.txt" "psycopg[binary]>=3.1" \
            || missing "pip could not install psycopg[binary]"
    fi
}

pick_ports() {
    [[ -s $DIR/ports.env ]] && return 0
    touch "$DIR/ports.env" && chmod 600 "$DIR/ports.env"  # it holds the accounting database password
    cat >"$DIR/ports.env" <<EOF
SLURMCTLD_PORT=$(free_port)
SLURMD_PORT=$(free_port)
SLURMDBD_PORT=$(free_port)
MARIADB_PORT=$(free_port)
PG_PORT=$(free_port)
MLFLOW_PORT=$(free_port)
MARIADB_SLURM_PASSWORD=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
EOF
}

start_munge() {
    mkdir -p "$DIR/munge" && chmod 700 "$DIR/munge"
    if [[ ! -s $DIR/munge/munge.key ]]; then
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
        chmod 400 "$DIR/munge/munge.key"
    fi
    alive "$DIR/munge/munged.pid" && return 0
    # --force: munged refuses root and a key outside /etc/munge otherwise.
    munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"
    wait_for 20 munge bash -c "munge -n -S '$DIR/munge/munge.socket' | unmunge -S '$DIR/munge/munge.socket'"
}

write_slurm_conf() {
    local cpus memory
    cpus=$(nproc)
    memory=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
    mkdir -p "$DIR/slurm/state" "$DIR/slurm/spool"
    cat >"$SLURM_CONF" <<EOF
# Written by deploy/local-cluster.sh: a one-node cluster on $HOST.
ClusterName=quantgate
SlurmctldHost=$HOST
SlurmctldPort=$SLURMCTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# scancel: SIGTERM, then SIGKILL after this many seconds.
KillWait=5
# A loaded machine can take a while to reap killed processes; past this SLURM drains the node.
UnkillableStepTimeout=180
StateSaveLocation=$DIR/slurm/state
SlurmdSpoolDir=$DIR/slurm/spool
SlurmctldPidFile=$DIR/slurm/slurmctld.pid
SlurmdPidFile=$DIR/slurm/slurmd.pid
SlurmctldLogFile=$DIR/slurm/slurmctld.log
SlurmdLogFile=$DIR/slurm/slurmd.log
# Accounting through slurmdbd (MariaDB): sacct shows every job's state, which submitit polls to
# notice a job that ended without a result (scancel, a node failure, a timeout).
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$HOST
AccountingStoragePort=$SLURMDBD_PORT
# The munge socket for connections to slurmdbd (AuthInfo covers the rest).
AccountingStoragePass=$DIR/munge/munge.socket
JobAcctGatherType=jobacct_gather/linux
# Each finished job is also one line in this file (JobId, JobState, times, node).
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/slurm/jobcomp.log
NodeName=$HOST CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
}

write_slurmdbd_conf() {
    cat >"$DIR/slurmdbd.conf" <<EOF
# Written by deploy/local-cluster.sh: SLURM's accounting daemon on MariaDB (its own data directory).
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
DbdHost=$HOST
DbdPort=$SLURMDBD_PORT
SlurmUser=root
PidFile=$DIR/slurm/slurmdbd.pid
LogFile=$DIR/slurm/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MARIADB_PORT
StorageUser=slurm
StoragePass=$MARIADB_SLURM_PASSWORD
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DIR/slurmdbd.conf"  # slurmdbd refuses a config others can read (it holds a password)
}

mariadb_sql() {
    mariadb --no-defaults -S "$DIR/mariadb/mariadb.sock" -u root -e "$1"
}

start_mariadb() {
    local data=$DIR/mariadb/data
    mkdir -p "$DIR/mariadb" && chown mysql "$DIR/mariadb"
    [[ -d $data/mysql ]] || mariadb-install-db --no-defaults --user=mysql --datadir="$data" \
        --auth-root-authentication-method=socket --skip-test-db >"$DIR/mariadb/install.log" 2>&1
    if ! alive "$DIR/mariadb/mariadb.pid"; then
        setsid mariadbd --no-defaults --user=mysql --datadir="$data" --socket="$DIR/mariadb/mariadb.sock" \
            --port="$MARIADB_PORT" --bind-address=127.0.0.1 --pid-file="$DIR/mariadb/mariadb.pid" \
            --log-error="$DIR/mariadb/mariadb.log" --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
    fi
    wait_for 60 mariadb mariadb-admin --no-defaults -S "$DIR/mariadb/mariadb.sock" -u root ping
    mariadb_sql "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$MARIADB_SLURM_PASSWORD';
                 GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

start_slurmdbd() {
    write_slurmdbd_conf
    alive "$DIR/slurm/slurmdbd.pid" || slurmdbd  # reads slurmdbd.conf next to $SLURM_CONF
    wait_for 60 slurmdbd sacctmgr -n list cluster
    [[ -n $(sacctmgr -n -P list cluster quantgate format=cluster) ]] || sacctmgr -i add cluster quantgate >/dev/null
}

node_idle() {
    [[ $(sinfo -h -N -o %t 2>/dev/null) =~ ^(idle|mix|alloc)$ ]]
}

start_slurm() {
    write_slurm_conf
    start_mariadb
    start_slurmdbd
    alive "$DIR/slurm/slurmctld.pid" || slurmctld -f "$SLURM_CONF"
    wait_for 30 slurmctld scontrol ping
    alive "$DIR/slurm/slurmd.pid" || slurmd -f "$SLURM_CONF"
    wait_for 30 "slurmd (node idle in sinfo)" node_idle
}

pg_as_user() {
    runuser -u "$PG_USER" -- "$@"
}

start_postgres() {
    local data=$DIR/postgres/data
    mkdir -p "$DIR/postgres" && chown "$PG_USER" "$DIR/postgres"
    [[ -s $data/PG_VERSION ]] || pg_as_user "$PG_BIN/initdb" -D "$data" -U "$PG_USER" -A trust >/dev/null
    if ! alive "$data/postmaster.pid"; then
        pg_as_user "$PG_BIN/pg_ctl" -D "$data" -l "$DIR/postgres/postgres.log" -w start \
            -o "-p $PG_PORT -k $DIR/postgres -c listen_addresses=127.0.0.1" >/dev/null
    fi
    wait_for 30 postgresql "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"
    if ! pg_as_user psql -h 127.0.0.1 -p "$PG_PORT" -tAc "SELECT 1 FROM pg_database WHERE datname='mlflow'" | grep -q 1; then
        pg_as_user createdb -h 127.0.0.1 -p "$PG_PORT" mlflow
    fi
}

backend_store_uri() {
    echo "postgresql+psycopg://$PG_USER@127.0.0.1:$PG_PORT/mlflow"
}

mlflow_healthy() {
    "$PYTHON" -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:$MLFLOW_PORT/health', timeout=5).read() != b'OK')"
}

start_mlflow() {
    mkdir -p "$DIR/mlflow/artifacts"
    if ! alive "$DIR/mlflow/mlflow.pid"; then
        # Its own session (setsid), so `down` stops the server and its workers as one process group.
        # Clients write artifacts straight to the shared disk (no proxying through the server).
        setsid "$PYTHON" -m mlflow server --backend-store-uri "$(backend_store_uri)" \
            --default-artifact-root "$DIR/mlflow/artifacts" --no-serve-artifacts \
            --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 >"$DIR/mlflow/mlflow.log" 2>&1 </dev/null &
        echo $! >"$DIR/mlflow/mlflow.pid"
    fi
    wait_for 180 "mlflow server" mlflow_healthy
}

print_usage_lines() {
    cat >"$DIR/env" <<EOF
export SLURM_CONF=$SLURM_CONF
EOF
    say "up: SLURM node $HOST (partition debug), PostgreSQL on 127.0.0.1:$PG_PORT, MLflow on 127.0.0.1:$MLFLOW_PORT"
    echo "export SLURM_CONF=$SLURM_CONF"
    echo "tracking=server tracking.uri=http://127.0.0.1:$MLFLOW_PORT"
    echo "hydra/launcher=slurm hydra.launcher.partition=debug"
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE [GROUP]: SIGTERM, wait up to 20 s, then SIGKILL
    local name=$1 file=$2 target
    alive "$file" || { rm -f "$file"; return 0; }
    target=$(head -n 1 "$file")
    [[ ${3:-} == group ]] && target=-$target
    kill -TERM -- "$target" 2>/dev/null || true
    for _ in $(seq 20); do alive "$file" || break; sleep 1; done
    alive "$file" && kill -KILL -- "$target" 2>/dev/null || true
    rm -f "$file"
    say "stopped $name"
}

cancel_jobs() {  # jobs still queued or running: their job steps would outlive slurmd
    local jobs
    alive "$DIR/slurm/slurmctld.pid" || return 0
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u)
    [[ -n $jobs ]] || return 0
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 30); do [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break; sleep 1; done
    say "cancelled jobs $(echo $jobs)"
}

down() {
    cancel_jobs
    stop_pidfile "mlflow server" "$DIR/mlflow/mlflow.pid" group
    if alive "$DIR/postgres/data/postmaster.pid"; then
        pg_as_user "$PG_BIN/pg_ctl" -D "$DIR/postgres/data" -m fast -w stop >/dev/null && say "stopped postgresql"
    fi
    stop_pidfile slurmd "$DIR/slurm/slurmd.pid"
    stop_pidfile slurmctld "$DIR/slurm/slurmctld.pid"
    stop_pidfile slurmdbd "$DIR/slurm/slurmdbd.pid"
    stop_pidfile mariadb "$DIR/mariadb/mariadb.pid"
    stop_pidfile munged "$DIR/munge/munged.pid"
}

status() {
    local rc=0 name file
    for name in munged:munge/munged.pid mariadb:mariadb/mariadb.pid slurmdbd:slurm/slurmdbd.pid slurmctld:slurm/slurmctld.pid slurmd:slurm/slurmd.pid \
            postgresql:postgres/data/postmaster.pid mlflow:mlflow/mlflow.pid; do
        file=$DIR/${name#*:}
        if alive "$file"; then echo "${name%%:*}: running (pid $(head -n 1 "$file"))"; else echo "${name%%:*}: stopped"; rc=1; fi
    done
    alive "$DIR/slurm/slurmctld.pid" && sinfo -h -N -o "node %N: %t %E"
    [[ -s $DIR/ports.env ]] && grep -v PASSWORD "$DIR/ports.env"
    return $rc
}

up() {
    install_missing
    pick_ports
    source "$DIR/ports.env"
    start_munge
    start_slurm
    start_postgres
    start_mlflow
    print_usage_lines
}

[[ -s $DIR/ports.env ]] && source "$DIR/ports.env"
case $ACTION in
    up) up ;;
    down) down ;;
    status) status ;;
    *) die "unknown action '$ACTION': use up, down or status" ;;
esac
