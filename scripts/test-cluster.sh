#!/usr/bin/env bash
# A real Kubernetes control plane on 127.0.0.1, for tests and for trying Slipway without a
# cluster: etcd, kube-apiserver and kube-controller-manager, started as envtest starts them, with
# all their state in one directory. No kubelet and no scheduler run, so Pods are created but
# never scheduled or started (docs/kubernetes.md, "A test cluster").
#
#   bash scripts/test-cluster.sh up DIR [--owner PID] [--ttl SECONDS]
#   bash scripts/test-cluster.sh down DIR
#   bash scripts/test-cluster.sh status DIR
#
# up builds the binaries when they are missing (tools/k8s/build.sh; SLIPWAY_K8S_BIN names a
# directory that already holds them), then starts the three processes in the background and
# returns once /readyz answers ok, the controller-manager is healthy and the `default`
# ServiceAccount exists. It writes:
#   DIR/kubeconfig     admin (client certificate CN=admin, O=system:masters), certificates embedded
#   DIR/env            KUBECONFIG=..., SLIPWAY_TEST_CLUSTER_SERVER=https://127.0.0.1:PORT, the ports
#   DIR/pki/           the generated CA, serving and client certificates, service-account keys
#   DIR/etcd/          etcd's data;  DIR/logs/{etcd,kube-apiserver,kube-controller-manager}.log
#   DIR/*.pid          one pid file per process
# Ports are picked free at the first up and kept in DIR/env for later ones (new ones are picked
# when they are taken). up on a cluster that is already up says so and exits 0.
#
# The processes outlive this script; `down DIR` stops them (TERM, then KILL after 10 s) and
# leaves DIR. With --owner PID a watchdog runs `down DIR` as soon as process PID is gone (a test
# passes its own pid); with --ttl SECONDS it does so after that long at the latest (both count
# only on the up that starts the cluster). status exits 0 when all three run and /readyz is ok,
# 3 otherwise.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
components=(etcd kube-apiserver kube-controller-manager)

say() { echo "test-cluster: $*" >&2; }
die() { say "$*"; exit 1; }

usage() {
  sed -n 's/^#   \(bash scripts\/test-cluster.sh .*\)/usage: \1/p' "$0" >&2
  exit 2
}

[ $# -ge 2 ] || usage
cmd="$1"
dir_arg="$2"
shift 2
case "$cmd" in
  up) mkdir -p "$dir_arg" ;;
  down | status)
    [ -d "$dir_arg" ] || { say "no cluster in $dir_arg (no such directory)"; [ "$cmd" = down ] && exit 0; exit 3; } ;;
  *) usage ;;
esac
DIR="$(cd "$dir_arg" && pwd)"

owner=""
ttl=""
while [ $# -gt 0 ]; do
  case "$1" in
    --owner) owner="${2:?--owner needs a pid}"; shift 2 ;;
    --ttl) ttl="${2:?--ttl needs seconds}"; shift 2 ;;
    *) usage ;;
  esac
done

# The pid in DIR/NAME.pid when that process is alive and is ours (its command line names DIR,
# so that a pid reused by another process is never signalled).
live_pid() {
  local f="$DIR/$1.pid" pid args i state
  [ -f "$f" ] || return 1
  pid="$(cat "$f")"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  args="$(tr '\0' '\n' <"/proc/$pid/cmdline")" || return 1
  # Empty while it execs (the new program's arguments are set up after its memory is): a
  # component just started was taken for one that had exited, and the cluster was torn down.
  # Empty for good once it is a zombie.
  for i in $(seq 1 40); do
    [ -z "$args" ] || break
    state="$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null)"
    case "$state" in "" | Z | X) return 1 ;; esac
    sleep 0.05
    args="$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  done
  # An argument that is DIR or a path under it (/tmp/c1 must not match /tmp/c10's processes).
  { grep -qxF -- "$DIR" <<<"$args" || grep -qF -- "$DIR/" <<<"$args"; } || return 1
  echo "$pid"
}

# TERM to each of NAMES at once (they shut down in parallel: ~2 s rather than ~7 s one after the
# other), KILL to any still there after 10 s.
stop() {
  local name pid pids=() i
  for name in "$@"; do
    if pid="$(live_pid "$name")"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  for i in $(seq 1 100); do
    pid=""
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && break; pid=""; done
    [ -z "${pid:-}" ] && break
    sleep 0.1
  done
  for name in "$@"; do
    if pid="$(live_pid "$name")"; then
      say "$name ($pid) did not stop on TERM within 10 s: KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/$name.pid"
  done
}

down() {
  # The watchdog first, so that it does not run `down` concurrently.
  [ "${SLIPWAY_TEST_CLUSTER_WATCHDOG:-}" = 1 ] || stop watchdog
  stop kube-controller-manager kube-apiserver etcd
}

port_free() {
  # Nothing listens there (a connection is refused).
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pick_port() {
  local p i taken="$*"
  for i in $(seq 1 200); do
    # Below the kernel's ephemeral range (32768-60999), where outgoing connections take theirs.
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
    case " $taken " in *" $p "*) continue ;; esac
    if port_free "$p"; then echo "$p"; return 0; fi
  done
  die "no free port found"
}

# Ports kept from an earlier up when still free, else new ones.
choose_ports() {
  ETCD_PORT="" ETCD_PEER_PORT="" API_PORT="" KCM_PORT=""
  if [ -f "$DIR/env" ]; then
    # shellcheck disable=SC1091
    . "$DIR/env"
    ETCD_PORT="${SLIPWAY_TEST_CLUSTER_ETCD_PORT:-}"
    ETCD_PEER_PORT="${SLIPWAY_TEST_CLUSTER_ETCD_PEER_PORT:-}"
    API_PORT="${SLIPWAY_TEST_CLUSTER_API_PORT:-}"
    KCM_PORT="${SLIPWAY_TEST_CLUSTER_KCM_PORT:-}"
  fi
  [ -n "$ETCD_PORT" ] && port_free "$ETCD_PORT" || ETCD_PORT="$(pick_port)"
  [ -n "$ETCD_PEER_PORT" ] && port_free "$ETCD_PEER_PORT" || ETCD_PEER_PORT="$(pick_port "$ETCD_PORT")"
  [ -n "$API_PORT" ] && port_free "$API_PORT" || API_PORT="$(pick_port "$ETCD_PORT" "$ETCD_PEER_PORT")"
  [ -n "$KCM_PORT" ] && port_free "$KCM_PORT" || KCM_PORT="$(pick_port "$ETCD_PORT" "$ETCD_PEER_PORT" "$API_PORT")"
  cat >"$DIR/env" <<EOF
KUBECONFIG=$DIR/kubeconfig
SLIPWAY_TEST_CLUSTER_SERVER=https://127.0.0.1:$API_PORT
SLIPWAY_TEST_CLUSTER_API_PORT=$API_PORT
SLIPWAY_TEST_CLUSTER_ETCD_PORT=$ETCD_PORT
SLIPWAY_TEST_CLUSTER_ETCD_PEER_PORT=$ETCD_PEER_PORT
SLIPWAY_TEST_CLUSTER_KCM_PORT=$KCM_PORT
EOF
}

# The CA, the API server's serving certificate, client certificates and the service-account key
# pair, made once per DIR (kept across down/up so that kubeconfigs handed out stay valid).
make_pki() {
  local pki="$DIR/pki"
  local f complete=1
  for f in "done" ca.crt apiserver.crt admin.crt kube-controller-manager.crt front-proxy-ca.crt \
    front-proxy-client.crt sa.key sa.pub; do
    [ -f "$pki/$f" ] || complete=""
  done
  [ -n "$complete" ] && return 0
  rm -rf "$pki"
  mkdir -p "$pki"
  (
    cd "$pki"
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=slipway-test-cluster-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
    sign() { # NAME SUBJECT EXTENSIONS
      openssl req -new -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    sign apiserver "/CN=kube-apiserver" "$(printf '%s\n' \
      "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth" \
      "subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local")"
    client_ext="$(printf '%s\n' "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth")"
    sign admin "/O=system:masters/CN=admin" "$client_ext"
    sign kube-controller-manager "/CN=system:kube-controller-manager" "$client_ext"
    # The aggregation layer's: the API server proxies to extension API servers with this client
    # certificate, and they trust the headers it sets when signed by front-proxy-ca.
    openssl req -x509 -newkey rsa:2048 -nodes -keyout front-proxy-ca.key -out front-proxy-ca.crt \
      -days 3650 -subj "/CN=slipway-test-cluster-front-proxy-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
    openssl req -new -newkey rsa:2048 -nodes -keyout front-proxy-client.key \
      -out front-proxy-client.csr -subj "/CN=front-proxy-client" 2>/dev/null
    printf '%s\n' "$client_ext" >front-proxy-client.ext
    openssl x509 -req -in front-proxy-client.csr -CA front-proxy-ca.crt -CAkey front-proxy-ca.key \
      -CAcreateserial -days 3650 -extfile front-proxy-client.ext -out front-proxy-client.crt 2>/dev/null
    rm -f front-proxy-client.csr front-proxy-client.ext
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    chmod 644 ca.crt
    touch "done"
  )
}

write_kubeconfig() { # FILE USER CERT-NAME
  local b64="base64 -w0"
  umask 077
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: slipway-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $($b64 <"$DIR/pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $($b64 <"$DIR/pki/$3.crt")
    client-key-data: $($b64 <"$DIR/pki/$3.key")
contexts:
- name: slipway-test
  context:
    cluster: slipway-test
    user: $2
current-context: slipway-test
EOF
}

# Starts NAME in its own session (so it outlives this script and a ^C to it), its output to
# DIR/logs/NAME.log.
start() {
  local name="$1"
  shift
  setsid "$@" >>"$DIR/logs/$name.log" 2>&1 </dev/null 9>&- &
  echo $! >"$DIR/$name.pid"
}

# How component NAME, a child of this script, ended (its exit status, or the signal that
# killed it), into ENDED: not in a command substitution, whose subshell cannot wait for it.
ended() {
  local pid
  ENDED="no pid file"
  pid="$(cat "$DIR/$1.pid" 2>/dev/null)" || return 0
  if kill -0 "$pid" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; then
    ENDED="pid $pid still runs, not as ours"
    return 0
  fi
  # (set -e: a status that is not 0 must not end the script here.)
  ENDED=0
  wait "$pid" 2>/dev/null || ENDED=$?
  if [ "$ENDED" -gt 128 ]; then
    ENDED="killed by signal $((ENDED - 128))"
  else
    ENDED="exit status $ENDED"
  fi
}

fail_start() {
  local name
  say "$1; the last lines of the logs:"
  for name in "${components[@]}"; do
    [ -f "$DIR/logs/$name.log" ] && { echo "--- $name" >&2; tail -n 15 "$DIR/logs/$name.log" >&2; }
  done
  down
  exit 1
}

api_ok() { # PATH
  curl -fsS --max-time 3 --cacert "$DIR/pki/ca.crt" --cert "$DIR/pki/admin.crt" \
    --key "$DIR/pki/admin.key" "https://127.0.0.1:$API_PORT$1" 2>/dev/null
}

kcm_ok() {
  # The controller-manager's own self-signed serving certificate: health only, no secret sent.
  curl -fsS --max-time 3 -k "https://127.0.0.1:$KCM_PORT/healthz" >/dev/null 2>&1
}

all_up() {
  local name
  for name in "${components[@]}"; do live_pid "$name" >/dev/null || return 1; done
  [ -f "$DIR/env" ] || return 1
  # shellcheck disable=SC1091
  . "$DIR/env"
  API_PORT="$SLIPWAY_TEST_CLUSTER_API_PORT"
  KCM_PORT="$SLIPWAY_TEST_CLUSTER_KCM_PORT"
  [ "$(api_ok /readyz)" = ok ] && kcm_ok
}

start_watchdog() {
  [ -n "$owner$ttl" ] || return 0
  local deadline=""
  [ -n "$ttl" ] && deadline=$(($(date +%s) + ttl))
  setsid env SLIPWAY_TEST_CLUSTER_WATCHDOG=1 bash -c '
    script="$1" dir="$2" owner="$3" deadline="$4"
    while :; do
      sleep 2
      if [ -n "$owner" ] && ! kill -0 "$owner" 2>/dev/null; then
        echo "$(date -u +%FT%TZ) owner $owner is gone: down" >>"$dir/logs/watchdog.log"; break
      fi
      if [ -n "$deadline" ] && [ "$(date +%s)" -ge "$deadline" ]; then
        echo "$(date -u +%FT%TZ) ttl reached: down" >>"$dir/logs/watchdog.log"; break
      fi
    done
    rm -f "$dir/watchdog.pid"
    bash "$script" down "$dir"
  ' slipway-test-cluster-watchdog "$root/scripts/test-cluster.sh" "$DIR" "$owner" "$deadline" \
    >/dev/null 2>&1 </dev/null 9>&- &
  echo $! >"$DIR/watchdog.pid"
}

up() {
  local began=$SECONDS bin name i
  if all_up; then
    say "already up: $SLIPWAY_TEST_CLUSTER_SERVER (KUBECONFIG=$DIR/kubeconfig)"
    exit 0
  fi
  # Whatever is left of an earlier cluster in DIR goes first.
  down

  bin="${SLIPWAY_K8S_BIN:-}"
  if [ -z "$bin" ] || [ ! -x "$bin/kube-apiserver" ] || [ ! -x "$bin/kube-controller-manager" ] ||
    [ ! -x "$bin/etcd" ]; then
    bin="$(bash "$root/tools/k8s/build.sh")"
  fi
  command -v openssl >/dev/null || die "openssl is missing (Debian: openssl)"
  command -v curl >/dev/null || die "curl is missing (Debian: curl)"

  mkdir -p "$DIR/logs" "$DIR/etcd" "$DIR/kube-controller-manager"
  chmod 700 "$DIR/etcd"
  make_pki
  choose_ports
  write_kubeconfig "$DIR/kubeconfig" admin admin
  write_kubeconfig "$DIR/kube-controller-manager/kubeconfig" system:kube-controller-manager \
    kube-controller-manager

  start etcd "$bin/etcd" \
    --name=slipway-test \
    --data-dir="$DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="slipway-test=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync \
    --log-level=warn

  start kube-apiserver "$bin/kube-apiserver" \
    --advertise-address=127.0.0.1 \
    --bind-address=127.0.0.1 \
    --secure-port="$API_PORT" \
    --cert-dir="$DIR/pki" \
    --tls-cert-file="$DIR/pki/apiserver.crt" \
    --tls-private-key-file="$DIR/pki/apiserver.key" \
    --client-ca-file="$DIR/pki/ca.crt" \
    --requestheader-client-ca-file="$DIR/pki/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$DIR/pki/front-proxy-client.crt" \
    --proxy-client-key-file="$DIR/pki/front-proxy-client.key" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$DIR/pki/sa.pub" \
    --service-account-signing-key-file="$DIR/pki/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --endpoint-reconciler-type=none \
    --allow-privileged=true \
    --profiling=false

  for i in $(seq 1 600); do
    [ "$(api_ok /readyz)" = ok ] && break
    for name in etcd kube-apiserver; do
      live_pid "$name" >/dev/null || {
        ended "$name"
        fail_start "$name exited while starting ($ENDED)"
      }
    done
    [ "$i" -lt 600 ] || fail_start "kube-apiserver not ready after 120 s"
    sleep 0.2
  done

  start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig="$DIR/kube-controller-manager/kubeconfig" \
    --authentication-kubeconfig="$DIR/kube-controller-manager/kubeconfig" \
    --authorization-kubeconfig="$DIR/kube-controller-manager/kubeconfig" \
    --bind-address=127.0.0.1 \
    --secure-port="$KCM_PORT" \
    --cert-dir="$DIR/kube-controller-manager" \
    --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$DIR/pki/sa.key" \
    --root-ca-file="$DIR/pki/ca.crt" \
    --controllers="$KCM_CONTROLLERS" \
    --profiling=false

  for i in $(seq 1 600); do
    # Ready for tests: the controllers run (the serviceaccount controller has made `default`).
    kcm_ok && api_ok /api/v1/namespaces/default/serviceaccounts/default >/dev/null && break
    live_pid kube-controller-manager >/dev/null || {
      ended kube-controller-manager
      fail_start "kube-controller-manager exited while starting ($ENDED)"
    }
    [ "$i" -lt 600 ] || fail_start "kube-controller-manager not ready after 120 s"
    sleep 0.2
  done

  start_watchdog
  say "up in $((SECONDS - began)) s: https://127.0.0.1:$API_PORT (KUBECONFIG=$DIR/kubeconfig)"
}

# The controllers that make the control plane behave as a cluster's does for what Slipway
# applies: namespaces really delete (the namespace controller removes their finalizer), owners'
# dependents are collected, Deployments get ReplicaSets and those Pods, Jobs and CronJobs run
# their course (as far as Pods without a kubelet let them), the `default` ServiceAccount and the
# kube-root-ca.crt ConfigMap appear in every namespace, aggregated ClusterRoles are filled in.
KCM_CONTROLLERS="${SLIPWAY_TEST_CLUSTER_CONTROLLERS:-namespace,garbagecollector,deployment,replicaset,statefulset,daemonset,job,cronjob,ttl-after-finished,serviceaccount,serviceaccount-token,root-ca-cert-publisher,clusterrole-aggregation}"

status() {
  local name pid rc=0
  for name in "${components[@]}" watchdog; do
    if pid="$(live_pid "$name")"; then
      echo "$name: running (pid $pid)"
    elif [ "$name" != watchdog ]; then
      echo "$name: stopped"
      rc=3
    fi
  done
  if [ -f "$DIR/env" ]; then
    # shellcheck disable=SC1091
    . "$DIR/env"
    API_PORT="$SLIPWAY_TEST_CLUSTER_API_PORT"
    echo "server: $SLIPWAY_TEST_CLUSTER_SERVER"
    echo "kubeconfig: $DIR/kubeconfig"
    if [ -f "$DIR/pki/done" ] && [ "$(api_ok /readyz)" = ok ]; then echo "readyz: ok"; else
      echo "readyz: not ready"
      rc=3
    fi
  fi
  return "$rc"
}

# One up or down at a time on a DIR (tests may call them concurrently); the cluster's processes
# do not inherit the lock.
if [ "$cmd" != status ] && command -v flock >/dev/null; then
  exec 9>"$DIR/.lock"
  flock 9
fi

case "$cmd" in
  up) up ;;
  down) down; say "down: $DIR" ;;
  status) status ;;
  *) usage ;;
esac
