#!/usr/bin/env bash
# A throwaway 2-node RabbitMQ cluster on loopback with the MQTT plugin and the HTTP
# auth backend pointed at dynreg's hooks, kept apart from any node the machine runs.
#
#   support/rabbitmq-cluster.sh start DIR HOOK_URL   # prints the variables to export
#   support/rabbitmq-cluster.sh stop DIR
#
# HOOK_URL is the hooks' base, e.g. http://dynreg:TOKEN@127.0.0.1:18080/hooks/rabbitmq
# (the backend appends /user, /vhost, /resource, /topic). On start it prints, for the
# tests: DYNREG_TEST_AMQP_URL (the worker's user on node 1), DYNREG_TEST_AMQP_URL_2
# (node 2), DYNREG_TEST_RABBITMQ_MQTT (the two nodes' MQTT ports, comma separated) and
# DYNREG_TEST_RABBITMQ_CTL (a rabbitmqctl wrapper for the nodes).
#
# Facts this relies on (RabbitMQ 3.10 on Debian): each node needs its own node name,
# ports, data and log dirs, config and enabled-plugins files; the nodes share an Erlang
# cookie through HOME; RABBITMQ_CONF_ENV_FILE must point away from the system's file.
# A fresh cluster is up in about 15 s; restarting an old one waits ~100 s in the MQTT
# plugin, so every start is fresh.
set -euo pipefail

cmd=${1:?start|stop}
dir=${2:?a directory for the nodes}
bin=/usr/lib/rabbitmq/bin
host=localhost

free_port() {
    local p=$1
    while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
    echo "$p"
}

# Node names are unique per cluster (a suffix kept in DIR), so that two clusters on one
# machine, or a stale one, never share a name in epmd.
node() { # node index
    echo "dynreg$(cat "$dir/suffix")-$1@$host"
}

node_env() { # node index
    local i=$1
    export HOME="$dir"
    export RABBITMQ_NODENAME
    RABBITMQ_NODENAME=$(node "$i")
    export RABBITMQ_MNESIA_BASE="$dir/n$i/mnesia"
    export RABBITMQ_LOG_BASE="$dir/n$i/log"
    export RABBITMQ_CONFIG_FILE="$dir/n$i/rabbitmq.conf"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/n$i/enabled_plugins"
    export RABBITMQ_CONF_ENV_FILE="$dir/n$i/rabbitmq-env.conf"
    export RABBITMQ_PID_FILE="$dir/n$i/pid"
    export ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT
    RABBITMQ_NODE_PORT=$(cat "$dir/n$i/amqp_port")
    export RABBITMQ_DIST_PORT
    RABBITMQ_DIST_PORT=$(cat "$dir/n$i/dist_port")
}

ctl() { # node index, args
    local i=$1
    shift
    (node_env "$i" && "$bin/rabbitmqctl" -n "$(node "$i")" "$@")
}

case "$cmd" in
start)
    hook=${3:?the hooks base URL}
    rm -rf "$dir"
    mkdir -p "$dir"
    cookie=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    printf '%s' "$cookie" >"$dir/.erlang.cookie"
    chmod 400 "$dir/.erlang.cookie"
    head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/suffix"
    next=25672
    for i in 1 2; do
        mkdir -p "$dir/n$i"
        amqp=$(free_port $((next)))
        dist=$(free_port $((amqp + 1)))
        mqtt=$(free_port $((dist + 1)))
        next=$((mqtt + 1))
        echo "$amqp" >"$dir/n$i/amqp_port"
        echo "$dist" >"$dir/n$i/dist_port"
        echo "$mqtt" >"$dir/n$i/mqtt_port"
        : >"$dir/n$i/rabbitmq-env.conf"
        echo '[rabbitmq_mqtt,rabbitmq_auth_backend_http].' >"$dir/n$i/enabled_plugins"
        cat >"$dir/n$i/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$amqp
mqtt.listeners.tcp.default = 127.0.0.1:$mqtt
mqtt.allow_anonymous = false
mqtt.vhost = /
mqtt.exchange = amq.topic
auth_backends.1 = http
auth_backends.2 = internal
auth_http.http_method = post
auth_http.user_path = $hook/user
auth_http.vhost_path = $hook/vhost
auth_http.resource_path = $hook/resource
auth_http.topic_path = $hook/topic
loopback_users = none
EOF
        (node_env "$i" && "$bin/rabbitmq-server" -detached)
    done
    for i in 1 2; do
        ctl "$i" wait --timeout 120 "$dir/n$i/pid" >/dev/null
    done
    ctl 2 stop_app >/dev/null
    ctl 2 join_cluster "$(node 1)" >/dev/null 2>&1
    ctl 2 start_app >/dev/null
    ctl 1 add_user dynreg-worker workerpw >/dev/null
    ctl 1 set_permissions -p / dynreg-worker '.*' '.*' '.*' >/dev/null
    ctl 1 await_online_nodes 2 >/dev/null 2>&1 || true
    cat >"$dir/ctl" <<EOF
#!/usr/bin/env bash
# rabbitmqctl for node N of this cluster: ctl N args...
exec "$(realpath "$0")" ctl "$dir" "\$@"
EOF
    chmod +x "$dir/ctl"
    echo "DYNREG_TEST_AMQP_URL=amqp://dynreg-worker:workerpw@127.0.0.1:$(cat "$dir/n1/amqp_port")/%2f"
    echo "DYNREG_TEST_AMQP_URL_2=amqp://dynreg-worker:workerpw@127.0.0.1:$(cat "$dir/n2/amqp_port")/%2f"
    echo "DYNREG_TEST_RABBITMQ_MQTT=$(cat "$dir/n1/mqtt_port"),$(cat "$dir/n2/mqtt_port")"
    echo "DYNREG_TEST_RABBITMQ_CTL=$dir/ctl"
    ;;
ctl)
    shift 2
    ctl "$@"
    ;;
stop)
    for i in 1 2; do
        [ -f "$dir/n$i/amqp_port" ] && [ -f "$dir/suffix" ] && ctl "$i" stop >/dev/null 2>&1 || true
    done
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start DIR HOOK_URL | stop DIR | ctl DIR N args..." >&2
    exit 2
    ;;
esac
