#!/usr/bin/env bash
# Development, test and demo services for essops, provisioned by the project itself.
#
#   scripts/services.sh up       install what is missing, start local+gcp PostgreSQL and Redis
#   scripts/services.sh down     stop what this script started (and nothing else)
#   scripts/services.sh status   show what runs
#   scripts/services.sh env      print the ports and paths as shell variables
#   scripts/services.sh prometheus   also start a private Prometheus on 127.0.0.1:29090
#                                that scrapes `essops ingest --metrics-listen 127.0.0.1:9464`
#                                with examples/prometheus's rules (`down` stops it)
#
# Everything lives under .services/ in the repository (git-ignored). The servers
# listen on loopback only, on the fixed ports that sites.toml uses. `up` is
# idempotent and safe when several test processes call it at once (flock).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SVC="$ROOT/.services"
PG_VERSION=15
PG_BIN="/usr/lib/postgresql/$PG_VERSION/bin"
PG_CONFIG="$PG_BIN/pg_config"
# name:port pairs; sites.toml points at the same ports. They sit below
# Linux's ephemeral range (32768-60999), so a client socket can never hold
# a port a cluster restarts on.
# "outage" serves only the ingest test that stops and restarts a server mid-run.
# "expired" serves only the TLS test of a certificate past its end date.
PG_CLUSTERS=("local:25432" "gcp:25433" "outage:25434" "expired:25435")
# Clusters that accept only TLS connections, with the certificate each shows:
# gcp (the cloud stand-in) so the TLS path is exercised every day, expired so
# a lapsed certificate is. CA and certificates live in .services/tls.
TLS_CLUSTERS=("gcp:server" "expired:expired")
REDIS_PORT=26379
REDIS_TLS_PORT=26380
PROMETHEUS_PORT=29090
# A Redis Cluster of three masters (no replicas), for the cache's cluster mode.
REDIS_CLUSTER_PORTS=(26391 26392 26393)
DB_USER=essops

log() { printf 'services: %s\n' "$*" >&2; }
die() { printf 'services: error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# PostgreSQL refuses to run as root; as root we run the clusters as the
# 'postgres' system user that Debian's package creates.
PG_OWNER="$(id -un)"
[ "$(id -u)" -eq 0 ] && PG_OWNER=postgres
as_pg() {
    if [ "$(id -un)" = "$PG_OWNER" ]; then "$@"; else runuser -u "$PG_OWNER" -- "$@"; fi
}

# ---------------------------------------------------------------- install --

missing_packages() {
    local pkgs=(postgresql-$PG_VERSION postgresql-server-dev-$PG_VERSION postgresql-contrib
                cmake gcc make dpkg-dev redis-server openssl util-linux
                lintian systemd adduser)
    local p
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}

install_packages() {
    local missing
    missing="$(missing_packages | tr '\n' ' ')"
    [ -z "${missing// /}" ] && return 0
    log "installing Debian packages: $missing"
    as_root apt-get update -qq
    # shellcheck disable=SC2086
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    # Debian's postgresql package starts a default cluster on 5432; we never use it.
    # Optional: hypothetical indexes for `essops index recommend` (else its advice is "unmeasured").
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-$PG_VERSION-hypopg >/dev/null 2>&1 \
        || log "postgresql-$PG_VERSION-hypopg not available; index recommend will give unmeasured advice"
}

# Prometheus (with promtool) for the monitoring tests. Its package would start
# a system-wide server on every interface; a policy-rc.d keeps it stopped
# (this script runs a private one on loopback), and its recommends stay out.
install_prometheus() {
    dpkg-query -W -f='${Status}' prometheus 2>/dev/null | grep -q "install ok installed" && return 0
    log "installing Debian's prometheus (kept stopped; a private one runs on loopback)"
    local policy=/usr/sbin/policy-rc.d placed=1
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod 755 "$policy"
        placed=0
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
        || { [ $placed -eq 0 ] && as_root rm -f "$policy"; die "apt-get install prometheus failed"; }
    [ $placed -eq 0 ] && as_root rm -f "$policy"
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
}

# Headless Chromium for the report's browser test (no sandbox user needed:
# the test runs it with --no-sandbox), with one small font family.
install_chromium() {
    dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q "install ok installed" && return 0
    log "installing Debian's chromium (headless use only)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null \
        || die "apt-get install chromium failed"
}

timescaledb_present() {
    [ -f "$("$PG_CONFIG" --sharedir)/extension/timescaledb.control" ]
}

# The mirror this machine's apt already uses for its own release, so no host
# name is written into the repository.
debian_mirror() {
    local codename
    codename="$(. /etc/os-release && echo "$VERSION_CODENAME")"
    apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null \
        | awk -v c="$codename" '$2 == c { print $1; exit }'
}

# TimescaleDB is not packaged for Debian 12. Debian 13's source package
# (2.19.x, Apache edition) builds against Debian 12's postgresql-server-dev-15.
# A temporary apt configuration fetches it; the system's sources stay as they were.
build_timescaledb() {
    local mirror work
    mirror="$(debian_mirror)"
    [ -n "$mirror" ] || die "cannot find this machine's Debian mirror in its apt configuration"
    work="$(mktemp -d /tmp/essops-tsdb.XXXXXX)"
    log "building TimescaleDB from Debian 13's source package (mirror from apt config) in $work"
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/src"
    echo "deb-src $mirror trixie main" > "$work/sources.list"
    local apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=$work/none"
                    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
                    -o "APT::Sandbox::User=root")
    apt-get "${apt_opts[@]}" update -qq
    (cd "$work/src" && apt-get "${apt_opts[@]}" source -qq timescaledb >/dev/null)
    local dir
    dir="$(find "$work/src" -maxdepth 1 -mindepth 1 -type d -name 'timescaledb-*' | head -1)"
    [ -n "$dir" ] || die "apt-get source timescaledb produced no source tree in $work/src"
    (cd "$dir" && PATH="$PG_BIN:$PATH" ./bootstrap -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DAPACHE_ONLY=ON \
        -DWARNINGS_AS_ERRORS=OFF -DPG_CONFIG="$PG_CONFIG" >"$work/bootstrap.log" 2>&1) \
        || die "TimescaleDB bootstrap failed; see $work/bootstrap.log"
    (cd "$dir" && as_root make -C build -j"$(nproc)" install >"$work/make.log" 2>&1) \
        || die "TimescaleDB build failed; see $work/make.log"
    timescaledb_present || die "TimescaleDB installed but its control file is missing"
    rm -rf "$work"
    log "TimescaleDB installed"
}

# ---------------------------------------------------------------- servers --

# A dev CA, a server certificate for "localhost" signed by it, and a second
# CA that signed nothing (for tests of a wrong CA). Generated once.
tls_material() {
    local dir="$SVC/tls"
    [ -s "$dir/server.crt" ] && return 0
    mkdir -p "$dir"
    log "generating a dev CA and a server certificate in $dir"
    (
        cd "$dir"
        umask 077
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=essops dev CA" \
            -keyout ca.key -out ca.crt 2>/dev/null
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=essops other CA" \
            -keyout other-ca.key -out other-ca.crt 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
        printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' > server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile server.ext -out server.crt 2>/dev/null
        chmod 644 ca.crt other-ca.crt server.crt
    )
}

# The same name and CA as server.crt, valid only in January 2020 (openssl 3.0's
# x509 cannot date a certificate in the past; its ca command can).
expired_certificate() {
    local dir="$SVC/tls"
    [ -s "$dir/expired.crt" ] && return 0
    (
        cd "$dir"
        umask 077
        : > expired-index.txt
        echo 01 > expired-serial
        printf '[ca]\ndefault_ca = dev\n[dev]\ndatabase = expired-index.txt\nnew_certs_dir = .\nserial = expired-serial\ndefault_md = sha256\npolicy = any\nx509_extensions = ext\n[any]\ncommonName = supplied\n[ext]\n%s\n' \
            "$(cat server.ext)" > expired-ca.cnf
        openssl ca -batch -notext -config expired-ca.cnf -cert ca.crt -keyfile ca.key -in server.csr \
            -startdate 20200101000000Z -enddate 20200201000000Z -out expired.crt 2>/dev/null
        cp server.key expired.key
        chmod 644 expired.crt
        rm -f expired-index.txt* expired-serial* expired-ca.cnf ./*.pem
    )
}

# Turns TLS on for a cluster and refuses its plain-text host connections;
# returns 0 when something changed (the caller reloads a running server).
pg_tls() { # data certificate
    local data="$1" cert="$2" changed=1
    tls_material
    expired_certificate
    if ! cmp -s "$SVC/tls/$cert.crt" "$data/server.crt"; then
        as_root install -m 600 -o "$PG_OWNER" "$SVC/tls/$cert.key" "$data/server.key"
        as_root install -m 644 -o "$PG_OWNER" "$SVC/tls/$cert.crt" "$data/server.crt"
        changed=0
    fi
    if ! grep -q "^# essops tls" "$data/postgresql.conf"; then
        printf "# essops tls\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n" | as_pg tee -a "$data/postgresql.conf" >/dev/null
        changed=0
    fi
    if ! grep -q "^hostnossl" "$data/pg_hba.conf"; then
        { echo "hostnossl all all all reject"; cat "$data/pg_hba.conf"; } > "$SVC/pg/hba.tmp"
        as_root install -m 600 -o "$PG_OWNER" "$SVC/pg/hba.tmp" "$data/pg_hba.conf"
        rm -f "$SVC/pg/hba.tmp"
        changed=0
    fi
    return $changed
}

# A production-like buffer pool: PostgreSQL's default 128 MB does not hold
# one table of a site-day, so every pass over it evicts the last (the docs
# suggest a quarter of RAM; the machine has 24 GiB and runs up to four
# clusters). Returns 0 when added (the caller restarts a running server).
pg_memory() { # data
    grep -q "^# essops memory" "$1/postgresql.conf" && return 1
    printf "# essops memory\nshared_buffers = 1GB\n" | as_pg tee -a "$1/postgresql.conf" >/dev/null
}

pg_running() { # name port
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$2" -d postgres >/dev/null 2>&1
}

pg_up() { # name port
    local name="$1" port="$2" data="$SVC/pg/$1"
    mkdir -p "$SVC/pg" "$SVC/run" "$SVC/secrets"
    chmod 700 "$SVC/secrets"
    # Password for the dev superuser: generated once, kept in a 0600 file that
    # sites.toml names through password_file (never in the config itself).
    local pwfile="$SVC/secrets/$name.password"
    [ -s "$pwfile" ] || (umask 077; openssl rand -hex 16 > "$pwfile")
    [ "$(id -u)" -eq 0 ] && chown "$PG_OWNER" "$SVC/pg" "$SVC/run"
    if [ ! -f "$data/PG_VERSION" ]; then
        log "initialising cluster '$name' in $data"
        local tmp_pw
        tmp_pw="$(mktemp)"; cp "$pwfile" "$tmp_pw"; chmod 644 "$tmp_pw"
        as_pg "$PG_BIN/initdb" -D "$data" -U "$DB_USER" --pwfile="$tmp_pw" \
            --auth-host=scram-sha-256 --auth-local=peer --encoding=UTF8 --locale=C.UTF-8 >/dev/null
        rm -f "$tmp_pw"
        as_pg tee -a "$data/postgresql.conf" >/dev/null <<EOF
# essops dev/test cluster '$name'
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$SVC/run'
shared_preload_libraries = 'timescaledb,pg_stat_statements'
timescaledb.telemetry_level = off
max_connections = 300
max_locks_per_transaction = 256
pg_stat_statements.track = all
EOF
    fi
    local tls_changed=1
    local t
    for t in "${TLS_CLUSTERS[@]}"; do
        if [ "${t%%:*}" = "$name" ] && pg_tls "$data" "${t##*:}"; then tls_changed=0; fi
    done
    local memory_changed=1
    pg_memory "$data" && memory_changed=0
    if pg_running "$name" "$port"; then
        # Reuse only our own server; never talk to one this script did not start.
        if [ -f "$data/postmaster.pid" ]; then
            if [ $memory_changed -eq 0 ]; then
                log "restarting PostgreSQL '$name' for its new buffer pool"
                as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$SVC/pg/$name.log" -o "-p $port" -m fast -w -t 60 restart >/dev/null 9>&-
            elif [ $tls_changed -eq 0 ]; then
                as_pg "$PG_BIN/pg_ctl" -D "$data" reload >/dev/null
            fi
            return 0
        fi
        die "port $port is taken by a PostgreSQL server this script did not start (not $data); stop it or change the port"
    fi
    log "starting PostgreSQL '$name' on 127.0.0.1:$port"
    # 9>&- : the server must not inherit the flock descriptor, or it holds the lock forever.
    # -p: the port is this script's, even for a cluster initialised with another.
    as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$SVC/pg/$name.log" -o "-p $port" -w -t 60 start >/dev/null 9>&- \
        || die "PostgreSQL '$name' did not start; see $SVC/pg/$name.log"
}

pg_down() { # name port
    local data="$SVC/pg/$1"
    [ -f "$data/postmaster.pid" ] || return 0
    log "stopping PostgreSQL '$1'"
    as_pg "$PG_BIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null || true
}

redis_running() {
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG
}

redis_tls_running() {
    (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_TLS_PORT") 2>/dev/null
}

redis_up() {
    mkdir -p "$SVC/redis"
    tls_material
    if redis_running; then
        if [ -f "$SVC/redis/redis.pid" ]; then
            redis_tls_running && return 0
            redis_down # started before the TLS port existed: restart with it
            sleep 0.2
        else
            die "port $REDIS_PORT is taken by a Redis this script did not start; stop it or change the port"
        fi
    fi
    log "starting Redis on 127.0.0.1:$REDIS_PORT (TLS on $REDIS_TLS_PORT)"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes --save "" --appendonly no \
        --tls-port "$REDIS_TLS_PORT" --tls-cert-file "$SVC/tls/server.crt" --tls-key-file "$SVC/tls/server.key" \
        --tls-ca-cert-file "$SVC/tls/ca.crt" --tls-auth-clients no \
        --dir "$SVC/redis" --pidfile "$SVC/redis/redis.pid" --logfile "$SVC/redis/redis.log" 9>&- \
        || die "Redis did not start; see $SVC/redis/redis.log"
    local i
    for i in $(seq 50); do redis_running && return 0; sleep 0.1; done
    die "Redis did not answer on port $REDIS_PORT; see $SVC/redis/redis.log"
}

redis_down() {
    [ -f "$SVC/redis/redis.pid" ] || return 0
    log "stopping Redis"
    kill "$(cat "$SVC/redis/redis.pid")" 2>/dev/null || true
    rm -f "$SVC/redis/redis.pid"
}

redis_cluster_up() {
    local port dir
    for port in "${REDIS_CLUSTER_PORTS[@]}"; do
        dir="$SVC/redis-cluster/$port"
        mkdir -p "$dir"
        if redis-cli -p "$port" ping >/dev/null 2>&1; then
            [ -f "$dir/redis.pid" ] || die "port $port is taken by a Redis this script did not start"
            continue
        fi
        log "starting Redis Cluster node on 127.0.0.1:$port"
        redis-server --bind 127.0.0.1 --port "$port" --daemonize yes --save "" --appendonly no \
            --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" --cluster-node-timeout 2000 \
            --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" 9>&- \
            || die "Redis Cluster node $port did not start; see $dir/redis.log"
    done
    local i
    for port in "${REDIS_CLUSTER_PORTS[@]}"; do
        for i in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    done
    # Nodes restarted from their nodes.conf already hold the slots; they only
    # need a moment to find each other. Create the cluster only when none do.
    if redis-cli -p "${REDIS_CLUSTER_PORTS[0]}" cluster info 2>/dev/null | grep -q "cluster_slots_assigned:0"; then
        log "creating the Redis Cluster (3 masters)"
        local nodes=()
        for port in "${REDIS_CLUSTER_PORTS[@]}"; do nodes+=("127.0.0.1:$port"); done
        redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null \
            || die "redis-cli --cluster create failed"
    fi
    for i in $(seq 100); do
        redis-cli -p "${REDIS_CLUSTER_PORTS[0]}" cluster info | grep -q "cluster_state:ok" && return 0
        sleep 0.1
    done
    die "the Redis Cluster on ${REDIS_CLUSTER_PORTS[*]} did not reach cluster_state:ok; see $SVC/redis-cluster/*/redis.log"
}

redis_cluster_down() {
    local port pidfile
    for port in "${REDIS_CLUSTER_PORTS[@]}"; do
        pidfile="$SVC/redis-cluster/$port/redis.pid"
        [ -f "$pidfile" ] || continue
        log "stopping Redis Cluster node $port"
        kill "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    done
}

# ------------------------------------------------------------------ verbs --

# A private Prometheus under .services/prometheus, loopback only, with the
# example scrape config and alert rules (tests start their own instances).
prometheus_up() {
    local dir="$SVC/prometheus"
    mkdir -p "$dir/data"
    if [ -f "$dir/prometheus.pid" ] && kill -0 "$(cat "$dir/prometheus.pid")" 2>/dev/null; then
        return 0
    fi
    sed "s|alerts.yml|$ROOT/examples/prometheus/alerts.yml|" "$ROOT/examples/prometheus/prometheus.yml" > "$dir/prometheus.yml"
    log "starting Prometheus on 127.0.0.1:$PROMETHEUS_PORT"
    prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
        --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" >"$dir/prometheus.log" 2>&1 9>&- &
    echo $! > "$dir/prometheus.pid"
    local i
    for i in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PROMETHEUS_PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    die "Prometheus did not start; see $dir/prometheus.log"
}

prometheus_down() {
    local pidfile="$SVC/prometheus/prometheus.pid"
    [ -f "$pidfile" ] || return 0
    log "stopping Prometheus"
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
}

with_lock() {
    mkdir -p "$SVC"
    exec 9>"$SVC/.lock"
    flock 9
}

up() {
    install_packages
    install_prometheus
    install_chromium
    timescaledb_present || build_timescaledb
    with_lock
    local c
    for c in "${PG_CLUSTERS[@]}"; do pg_up "${c%%:*}" "${c##*:}"; done
    redis_up
    redis_cluster_up
}

down() {
    with_lock
    local c
    for c in "${PG_CLUSTERS[@]}"; do pg_down "${c%%:*}" "${c##*:}"; done
    redis_down
    redis_cluster_down
    prometheus_down
}

status() {
    local c rc=0
    for c in "${PG_CLUSTERS[@]}"; do
        if pg_running "${c%%:*}" "${c##*:}"; then echo "postgres ${c%%:*} 127.0.0.1:${c##*:} up"
        else echo "postgres ${c%%:*} 127.0.0.1:${c##*:} down"; rc=1; fi
    done
    if redis_running; then echo "redis 127.0.0.1:$REDIS_PORT up"; else echo "redis 127.0.0.1:$REDIS_PORT down"; rc=1; fi
    if redis-cli -p "${REDIS_CLUSTER_PORTS[0]}" cluster info 2>/dev/null | grep -q "cluster_state:ok"; then
        echo "redis cluster 127.0.0.1:${REDIS_CLUSTER_PORTS[*]} up"
    else echo "redis cluster 127.0.0.1:${REDIS_CLUSTER_PORTS[*]} down"; rc=1; fi
    return $rc
}

# Stop or start one PostgreSQL cluster: fault tests take a server away mid-run.
# Runs "$1" (pg_up or pg_down) on the cluster named "$2"; an unknown name is an error.
one_cluster() {
    with_lock
    local c
    for c in "${PG_CLUSTERS[@]}"; do
        if [ "${c%%:*}" = "$2" ]; then
            "$1" "$2" "${c##*:}"
            return
        fi
    done
    echo "services: no cluster named '$2' (known: ${PG_CLUSTERS[*]%%:*})" >&2
    return 2
}
stop_one() { one_cluster pg_down "$1"; }
start_one() { one_cluster pg_up "$1"; }

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    stop) stop_one "${2:?server name}" ;;
    start) start_one "${2:?server name}" ;;
    prometheus) up; with_lock; prometheus_up ;;
    *) echo "usage: $0 up|down|status|stop NAME|start NAME|prometheus" >&2; exit 2 ;;
esac
