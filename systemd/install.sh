#!/usr/bin/env bash
# Install (or upgrade) edged as a systemd service on a device. Run as root; running it
# again is safe: the venv is upgraded in place, an existing /etc/edged/edged.yaml or
# edged.env is never touched, and a running service is restarted on the new code.
#
#   systemd/install.sh                  # install this checkout
#   systemd/install.sh edged-0.1.0-py3-none-any.whl    # or a wheel, a path, a requirement
#   systemd/install.sh --dry-run        # print the steps, change nothing
#   systemd/install.sh --agent          # also edged agent (the SageMaker Edge Agent API)
#   PYTHON=/usr/bin/python3.12 systemd/install.sh      # another interpreter (>= 3.11)
#
# What goes where (systemd/edged.service expects the same paths):
#   /opt/edged                      a venv holding edged and its dependencies
#   /usr/local/bin/edged            a link to /opt/edged/bin/edged, for operators
#   /etc/edged/edged.yaml           the config (from configs/edged.yaml if absent)
#   /etc/edged/edged.env            secrets for ${NAME} references, 0600 (if absent)
#   /etc/systemd/system/edged.service
#   user and group edged            the service's system user, no home, no shell
# With --agent, also:
#   /etc/edged/agent.json           the agent's config (from configs/agent.json if absent)
#   /etc/edged/agent.env            AWS credentials for S3 capture, 0600 (if absent)
#   /etc/systemd/system/edged-agent.service
set -euo pipefail

PREFIX=/opt/edged
CONF_DIR=/etc/edged
UNIT_DIR=/etc/systemd/system
LINK=/usr/local/bin/edged
SERVICE_USER=edged
DOC_DIR=$PREFIX/share/doc/edged
# The venv's interpreter must stay visible to the service: not in a home directory
# (ProtectHome=yes hides them, and the edged user could not read root's anyway).
PYTHON=${PYTHON:-/usr/bin/python3}

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
CHECKOUT=$(dirname -- "$HERE")

DRY_RUN=0
AGENT=0
PACKAGE=""

usage() {
    sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while (($#)); do
    case $1 in
        --dry-run | -n) DRY_RUN=1 ;;
        --agent) AGENT=1 ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "install.sh: unknown option $1" >&2; usage >&2; exit 64 ;;
        *)
            if [[ -n $PACKAGE ]]; then
                echo "install.sh: give one package at most" >&2
                exit 64
            fi
            PACKAGE=$1
            ;;
    esac
    shift
done
PACKAGE=${PACKAGE:-$CHECKOUT}

say() { printf '==> %s\n' "$*"; }

# Runs a step, or only prints it under --dry-run.
run() {
    if ((DRY_RUN)); then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# Installs configs/NAME as $CONF_DIR/NAME, readable by the service, unless one is there:
# an operator's config is never replaced.
install_config() {
    if [[ -e $CONF_DIR/$1 ]]; then
        echo "$CONF_DIR/$1 exists: kept as it is"
    else
        run install -m 0640 -o root -g "$SERVICE_USER" "$CHECKOUT/configs/$1" "$CONF_DIR/$1"
    fi
}

# Creates $CONF_DIR/NAME (0600, root) holding the comment lines given, unless one is
# there: systemd reads it as root (EnvironmentFile=) for the secrets it holds.
create_env_file() {
    local name=$1 what=$2
    shift 2
    if [[ -e $CONF_DIR/$name ]]; then
        echo "$CONF_DIR/$name exists: kept as it is"
    elif ((DRY_RUN)); then
        echo "+ create $CONF_DIR/$name (0600, root; $what)"
    else
        (
            umask 077
            printf '%s\n' "$@" >"$CONF_DIR/$name"
        )
    fi
}

if ((!DRY_RUN)) && ((EUID != 0)); then
    echo "install.sh: run as root (or with --dry-run to see the steps)" >&2
    exit 77
fi

if ! "$PYTHON" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "install.sh: edged needs $PYTHON >= 3.11 with venv (apt install python3-venv)" >&2
    ((DRY_RUN)) || exit 69
fi
case $(readlink -f -- "$PYTHON" 2>/dev/null || echo "$PYTHON") in
    /root/* | /home/*)
        echo "install.sh: $PYTHON lives in a home directory, which the service cannot" \
            "see; use the system's python3 (PYTHON=/usr/bin/python3)" >&2
        ((DRY_RUN)) || exit 69
        ;;
esac

say "venv with edged in $PREFIX"
if [[ ! -x $PREFIX/bin/python ]]; then
    run "$PYTHON" -m venv "$PREFIX"
fi
run "$PREFIX/bin/python" -m pip install --quiet --upgrade pip
run "$PREFIX/bin/python" -m pip install --quiet --upgrade "$PACKAGE"
run ln -sfn "$PREFIX/bin/edged" "$LINK"
run install -D -m 0644 "$HERE/README.md" "$DOC_DIR/systemd.md"

say "system user $SERVICE_USER"
if getent passwd "$SERVICE_USER" >/dev/null; then
    echo "user $SERVICE_USER exists"
else
    run useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin --comment "edged daemon" "$SERVICE_USER"
fi

say "config in $CONF_DIR"
run install -d -m 0755 "$CONF_DIR"
install_config edged.yaml
create_env_file edged.env "secrets for \${NAME} references" \
    "# Secrets for \${NAME} references in edged.yaml, read by systemd as root." \
    "# EDGED_MQTT_PASSWORD=..."
if ((DRY_RUN)) || [[ ! -x $PREFIX/bin/edged ]]; then
    run "$PREFIX/bin/edged" check-config "$CONF_DIR/edged.yaml"
elif ! "$PREFIX/bin/edged" check-config "$CONF_DIR/edged.yaml"; then
    echo "warning: fix $CONF_DIR/edged.yaml; the service will not start until it passes" >&2
fi

say "unit $UNIT_DIR/edged.service"
# The unit is ours and replaced on upgrade; local changes go in a drop-in
# (systemctl edit edged), which survives.
run install -m 0644 "$HERE/edged.service" "$UNIT_DIR/edged.service"
UNITS=(edged)

if ((AGENT)); then
    say "agent: config in $CONF_DIR, unit $UNIT_DIR/edged-agent.service"
    run install -D -m 0644 "$CHECKOUT/docs/agent.md" "$DOC_DIR/agent.md"
    install_config agent.json
    create_env_file agent.env "AWS credentials for S3 capture" \
        "# AWS credentials for the agent's Cloud (S3) capture, read by systemd as root." \
        "# AWS_ACCESS_KEY_ID=..." "# AWS_SECRET_ACCESS_KEY=..."
    run install -m 0644 "$HERE/edged-agent.service" "$UNIT_DIR/edged-agent.service"
    UNITS+=(edged-agent)
fi

if [[ -d /run/systemd/system ]]; then
    say "systemd: enable and start ${UNITS[*]}"
    was_active=()
    for unit in "${UNITS[@]}"; do
        if systemctl is-active --quiet "$unit"; then
            was_active+=("$unit")
        fi
    done
    run systemctl daemon-reload
    run systemctl enable --now "${UNITS[@]}"
    if ((${#was_active[@]})); then
        run systemctl try-restart "${was_active[@]}" # pick up the new code
    fi
    echo "status: systemctl status ${UNITS[*]}; logs: journalctl -u edged -f"
else
    say "systemd is not running here (no /run/systemd/system): nothing started"
    echo "on the device, run: systemctl daemon-reload && systemctl enable --now ${UNITS[*]}"
fi
