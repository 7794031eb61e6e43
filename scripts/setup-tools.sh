#!/usr/bin/env bash
# Installs the tools the operations checks need, only what is missing (idempotent; once
# installed it needs no network):
# - Debian packages: prometheus (promtool), docker-compose (offline `config`), a JDK and
#   the RabbitMQ Java client (librabbitmq-client-java);
# - a Python venv with scripts/ops-requirements.txt (kubernetes-validate, schemathesis,
#   check-jsonschema, pika) in $SCA_TOOLS_DIR (default ~/.cache/sca-dispatch-tools), kept
#   outside the work tree so fresh clones reuse it.
# Prints the venv's bin directory on stdout as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS_DIR="${SCA_TOOLS_DIR:-$HOME/.cache/sca-dispatch-tools}"
VENV="$TOOLS_DIR/venv"
REQ="scripts/ops-requirements.txt"

need_deb=()
command -v promtool >/dev/null 2>&1 || need_deb+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || need_deb+=(docker-compose)
command -v javac >/dev/null 2>&1 || need_deb+=(default-jdk-headless)
[ -f /usr/share/java/amqp-client.jar ] || need_deb+=(librabbitmq-client-java)

if [ ${#need_deb[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages: ${need_deb[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${need_deb[@]}" >&2
  else
    echo "error: missing ${need_deb[*]}; install with: sudo apt-get install ${need_deb[*]}" >&2
    exit 1
  fi
fi

stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up the Python tools venv in $VENV" >&2
  mkdir -p "$TOOLS_DIR"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ" >&2
  echo "$want" >"$stamp"
fi
echo "$VENV/bin"
