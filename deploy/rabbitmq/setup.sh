#!/usr/bin/env bash
# Least-privilege RabbitMQ users for sca-dispatch, applied with rabbitmqctl:
#
#   backend  publishes challenges and responses through the ingress exchanges
#            `sca.challenges.in`, `sca.responses.in` (and `sca.challenges.by-user` in
#            cluster mode), reads `sca.outcomes` and `sca.events` through queues of its
#            own (`backend.*` or server-named). It cannot write `sca.control`,
#            `sca.outcomes`, `sca.events`, the partition queues `sca.challenges.p*` or any
#            queue through the default exchange.
#   daemon   declares and uses the whole `sca.*` topology, publishes replies to
#            `reply_to` queues through the default exchange.
#   monitor  tag `monitoring` (management UI/API read-only), no AMQP access.
#
# The topology (including the ingress exchanges bound to the queues) comes from
# definitions.json, imported into the vhost. Passwords are read from the environment
# and passed on stdin, never on a command line.
#
# Usage:
#   SCA_RMQ_BACKEND_PASSWORD=… SCA_RMQ_DAEMON_PASSWORD=… SCA_RMQ_MONITOR_PASSWORD=… \
#     deploy/rabbitmq/setup.sh            # create or update
#   deploy/rabbitmq/setup.sh --delete     # remove the users and the vhost
# Names (defaults): SCA_RMQ_VHOST=sca SCA_RMQ_BACKEND_USER=sca-backend
#   SCA_RMQ_DAEMON_USER=sca-dispatch SCA_RMQ_MONITOR_USER=sca-monitor
#   RABBITMQCTL=rabbitmqctl
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
ctl="${RABBITMQCTL:-rabbitmqctl}"
vhost="${SCA_RMQ_VHOST:-sca}"
backend="${SCA_RMQ_BACKEND_USER:-sca-backend}"
daemon="${SCA_RMQ_DAEMON_USER:-sca-dispatch}"
monitor="${SCA_RMQ_MONITOR_USER:-sca-monitor}"

q() { "$ctl" --quiet "$@" >/dev/null; }

if [ "${1:-}" = "--delete" ]; then
  for u in "$backend" "$daemon" "$monitor"; do
    q delete_user "$u" 2>/dev/null || true
  done
  q delete_vhost "$vhost" 2>/dev/null || true
  exit 0
fi

user() { # name password-variable tag
  local name="$1" var="$2" tag="$3"
  local pw="${!var:-}"
  if [ -z "$pw" ]; then
    echo "error: $var is not set (the password of user $name)" >&2
    exit 2
  fi
  if "$ctl" --quiet list_users | awk '{print $1}' | grep -qxF -- "$name"; then
    printf '%s' "$pw" | q change_password "$name"
  else
    printf '%s' "$pw" | q add_user "$name"
  fi
  q set_user_tags "$name" $tag
}

q add_vhost "$vhost" 2>/dev/null || true
defs="$(mktemp)"
trap 'rm -f "$defs"' EXIT
sed "s/__VHOST__/${vhost//\//\\/}/g" "$here/definitions.json" >"$defs"
chmod 644 "$defs" # read by the broker's CLI tools, which may run as another user
q import_definitions "$defs"

user "$backend" SCA_RMQ_BACKEND_PASSWORD ""
user "$daemon" SCA_RMQ_DAEMON_PASSWORD ""
user "$monitor" SCA_RMQ_MONITOR_PASSWORD monitoring

# set_permissions: configure, write, read (regular expressions on resource names).
q set_permissions -p "$vhost" "$backend" \
  '^(backend\..*|amq\.gen-.*)$' \
  '^(sca\.challenges\.in|sca\.responses\.in|sca\.challenges\.by-user|backend\..*|amq\.gen-.*)$' \
  '^(sca\.outcomes|sca\.events|backend\..*|amq\.gen-.*)$'
q set_permissions -p "$vhost" "$daemon" \
  '^(sca\..*|amq\.gen-.*)$' \
  '^(sca\..*|amq\.default|amq\.gen-.*)$' \
  '^(sca\..*|amq\.gen-.*)$'
q set_permissions -p "$vhost" "$monitor" '^$' '^$' '^$'
echo "RabbitMQ users $backend, $daemon, $monitor set up on vhost $vhost"
