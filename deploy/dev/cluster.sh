#!/usr/bin/env bash
# `make cluster`: a local three-server cluster on one etcd, for trying it by
# hand. etcd listens on 127.0.0.1:23379; servers a, b and c bind 127.0.0.1,
# 127.0.0.2 and 127.0.0.3 on the usual ports (23001-23003), CURVE, state
# under ./.pantry-dev/cluster. Ctrl-C stops everything.
#
#   pantry-admin --host 127.0.0.1 --curve-key-file keys.yml status   (a .pantry/keys.yml
#   with only server_public_key: the first admin is trusted on first use)
set -euo pipefail
release=${RELEASE:-target/release}
state=.pantry-dev/cluster
mkdir -p "$state"
pids=()
stop() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop EXIT INT TERM

etcd --name dev --data-dir "$state/etcd" \
    --listen-client-urls http://127.0.0.1:23379 --advertise-client-urls http://127.0.0.1:23379 \
    --listen-peer-urls http://127.0.0.1:23380 --initial-advertise-peer-urls http://127.0.0.1:23380 \
    --initial-cluster dev=http://127.0.0.1:23380 >"$state/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/23379) 2>/dev/null && break
    sleep 0.2
done

config() { # id host
    cat <<YAML
log_to: stdout
log_level: info
root_dir: $state/$1
networking:
  server_host: $2
  pub_sub_port: 23001
  receive_port: 23002
  file_service_port: 23003
  security: curve
cluster:
  etcd: [http://127.0.0.1:23379]
  server_id: $1
  advertise: $2
YAML
}

i=1
for id in a b c; do
    host=127.0.0.$i
    config "$id" "$host" >"$state/$id.yml"
    if [ "$id" != a ]; then
        # Every server of a cluster uses the first one's key pair.
        mkdir -p "$state/$id/security/curve"
        chmod 700 "$state/$id/security/curve"
        install -m 600 "$state/a/security/curve/server_keys.yml" "$state/$id/security/curve/server_keys.yml"
    fi
    "$release/pantry-server" -c "$state/$id.yml" 2>&1 | sed -u "s/^/[$id] /" &
    pids+=($!)
    if [ "$id" = a ]; then
        for _ in $(seq 50); do
            [ -s "$state/a/security/curve/server_keys.yml" ] && break
            sleep 0.1
        done
    fi
    i=$((i + 1))
done
echo "cluster up: servers a=127.0.0.1 b=127.0.0.2 c=127.0.0.3, etcd 127.0.0.1:23379; server public key:"
grep '^public_key' "$state/a/security/curve/server_keys.yml"
wait
