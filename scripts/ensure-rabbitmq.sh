#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers on 127.0.0.1:5672 (guest/guest).
# - already answering: nothing to do;
# - installed but stopped: `rabbitmq-server -detached`, then `rabbitmqctl await_startup`;
# - not installed: installs Debian's `rabbitmq-server` package when run as root with apt,
#   otherwise stops with a message saying how to install it.
# Then enables the rabbitmq_consistent_hash_exchange plugin (shipped with the broker,
# needed by cluster mode) when rabbitmq-plugins is at hand.
set -euo pipefail

enable_plugins() {
  export PATH="$PATH:/usr/sbin"
  if command -v rabbitmq-plugins >/dev/null 2>&1; then
    if ! rabbitmq-plugins list -e -m 2>/dev/null | grep -qx rabbitmq_consistent_hash_exchange; then
      rabbitmq-plugins enable rabbitmq_consistent_hash_exchange >/dev/null 2>&1 \
        || echo "warning: could not enable rabbitmq_consistent_hash_exchange (cluster mode needs it)" >&2
    fi
  fi
}

port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if port_open; then
  enable_plugins
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "RabbitMQ is not installed: installing Debian's rabbitmq-server package" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
  else
    echo "error: RabbitMQ is not installed and cannot be installed automatically here." >&2
    echo "       Install it with:  sudo apt-get install rabbitmq-server" >&2
    echo "       or point SCA_AMQP_URL at a running broker." >&2
    exit 1
  fi
fi
export PATH="$PATH:/usr/sbin"

if ! port_open; then
  echo "starting RabbitMQ (rabbitmq-server -detached)" >&2
  rabbitmq-server -detached >/dev/null 2>&1 || true
  if ! timeout 120 rabbitmqctl await_startup >/dev/null 2>&1; then
    echo "error: RabbitMQ did not start; see /var/log/rabbitmq/" >&2
    exit 1
  fi
fi

for _ in $(seq 1 100); do
  port_open && { enable_plugins; exit 0; }
  sleep 0.2
done
echo "error: RabbitMQ started but nothing answers on 127.0.0.1:5672" >&2
exit 1
