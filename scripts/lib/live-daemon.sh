# Shared by scripts/abuse.sh and scripts/soak.sh (sourced, not run): a daemon of the
# chosen build driven by `sca-dispatch load`, on queues and exchanges of its own
# (namespace "$ns"), on the load tool's simulators, with a fresh bearer token.
#
#   live_init NAME PROFILE     builds the binary; sets bin, ns, dir, token, http_port,
#                              metrics_port; removes queues and work dir on exit
#   live_load ARGS...          starts the load tool in the background (load_pid) with
#                              the namespace's queue/exchange/api/sim-dir options
#   live_daemon                writes $dir/config.toml from the simulators' lines the
#                              load tool printed, starts the daemon (daemon_pid): $bin,
#                              or $daemon_bin when set (another build of the daemon
#                              under the same load tool); LIVE_DAEMON_CMD replaces its
#                              `run` (e.g. `simulate relay`), LIVE_WRAP goes before it
#                              (e.g. `valgrind --tool=callgrind`)
#   live_stop_daemon           stops the daemon and waits for it
#
# Environment: LIVE_KEEP=1 keeps the work directory (config, logs); LIVE_AMQP_URL, another
# broker than the local one (its queues are then left to it); LIVE_EXTRA_TOML, sections
# appended to the daemon's configuration (`[runtime]`, `[limits]`: ones the simulators'
# lines do not write); LIVE_AMQP_TOML, lines added to its `[amqp]` section.

live_free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

live_init() {
  local name="$1" profile="$2"
  ./scripts/ensure-rabbitmq.sh
  if [ "$profile" = release ]; then cargo build --release --quiet --bin sca-dispatch; else cargo build --quiet --bin sca-dispatch; fi
  bin="target/$profile/sca-dispatch"
  ns="$name-$$"
  dir="$(mktemp -d "/tmp/sca-$ns.XXXX")"
  token="tok-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  http_port="$(live_free_port)"; metrics_port="$(live_free_port)"
  amqp_url="${LIVE_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
  load_pid=""; daemon_pid=""
  trap live_cleanup EXIT
}

live_cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null && wait "$load_pid" 2>/dev/null
  if [ -z "${LIVE_AMQP_URL:-}" ] && { command -v rabbitmqctl >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmqctl ]; }; then
    for q in challenges responses dead; do
      PATH="$PATH:/usr/sbin" rabbitmqctl -q delete_queue "$ns.$q" >/dev/null 2>&1 || true
    done
  fi
  [ "${LIVE_KEEP:-0}" = 1 ] && echo "work directory: $dir" || rm -rf "$dir"
  return 0
}

live_load() {
  SCA_LOAD_API_TOKEN="$token" "$bin" load --amqp-url "$amqp_url" \
    --api "http://127.0.0.1:$http_port" \
    --challenges-queue "$ns.challenges" --outcomes-exchange "$ns.outcomes" \
    --sim-dir "$dir/sims" "$@" >"$dir/load.log" 2>&1 &
  load_pid=$!
  for _ in $(seq 1 300); do grep -q "^Waiting for" "$dir/load.log" && break; sleep 0.1; done
  grep -q "^Waiting for" "$dir/load.log" || { echo "error: the load tool did not start:" >&2; cat "$dir/load.log" >&2; exit 1; }
}

live_daemon() {
  {
    cat <<TOML
[amqp]
url = "$amqp_url"
challenges_queue = "$ns.challenges"
responses_queue = "$ns.responses"
outcomes_exchange = "$ns.outcomes"
events_exchange = "$ns.events"
dead_exchange = "$ns.dead"
dead_queue = "$ns.dead"
control_exchange = "$ns.control"
${LIVE_AMQP_TOML:-}

[http]
addr = "127.0.0.1:$http_port"
api_tokens = "$token"

[metrics]
addr = "127.0.0.1:$metrics_port"

[log]
level = "warn"

TOML
    # The simulators' [apns], [fcm] and [sms] sections, as the load tool printed them.
    sed -n '/^Configure the daemon/,/^Waiting for/p' "$dir/load.log" | sed '1d;$d'
    printf '%s\n' "${LIVE_EXTRA_TOML:-}"
  } >"$dir/config.toml"
  # shellcheck disable=SC2086 # LIVE_WRAP and LIVE_DAEMON_CMD are split into words.
  RUST_BACKTRACE=1 ${LIVE_WRAP:-} "${daemon_bin:-$bin}" ${LIVE_DAEMON_CMD:-run} --config "$dir/config.toml" >"$dir/daemon.log" 2>&1 &
  daemon_pid=$!
}

live_stop_daemon() {
  kill "$daemon_pid" 2>/dev/null || true
  wait "$daemon_pid" 2>/dev/null || true
  daemon_pid=""
}
