#!/usr/bin/env bash
# Installs dsagent as systemd services. Idempotent: running it again with the same options changes
# nothing and says "unchanged"; operator-edited files under /etc/dsagent are never overwritten.
#
#   sudo packaging/systemd/install.sh [--with-sidecar] [--enable-gpu-control] [--no-start]
#
#   --with-sidecar        also install the engine (torch): dssidecar.service and the builtin engine
#   --enable-gpu-control  add the CAP_SYS_ADMIN drop-in so rules may change GPU clocks/power (off by default;
#                         running again without it removes the drop-in)
#   --no-start            install and enable, but do not (re)start the service
#   --no-venv             do not create/upgrade the virtual environment in /opt/dsagent
#   --root DIR            install under DIR instead of / (packaging, tests): no user, no systemctl
#   --source DIR          what pip installs (default: this repository)
#
# Layout: /opt/dsagent (venv with the dsagent and dssidecar commands, the default rule packs in
# share/dsagent/rules), /etc/dsagent/config.yaml, /etc/dsagent/rules/*.yaml (this host's own rules),
# /etc/dsagent/dsagent.env and dssidecar.env (secrets, DSAGENT_*),
# /var/lib/dsagent (spool, exports, models), /etc/systemd/system/{dsagent,dssidecar}.service.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SOURCE="$(cd "$HERE/../.." && pwd)"
ROOT=/
WITH_SIDECAR=0
GPU_CONTROL=0
START=1
VENV=1

while [ $# -gt 0 ]; do
  case "$1" in
    --with-sidecar) WITH_SIDECAR=1 ;;
    --enable-gpu-control) GPU_CONTROL=1 ;;
    --no-start) START=0 ;;
    --no-venv) VENV=0 ;;
    --root) ROOT="${2:?--root needs a directory}"; shift ;;
    --source) SOURCE="${2:?--source needs a directory}"; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

ROOT="${ROOT%/}"
say() { echo "install.sh: $*"; }
on_host() { [ -z "$ROOT" ]; }
if on_host && [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (it creates a system user and writes /etc, /opt, /var/lib)" >&2
  exit 2
fi

CHANGED_UNITS=0
# install_file SRC DST MODE: copy when the content differs; an up-to-date file is left alone.
install_file() {
  if [ -f "$2" ] && cmp -s "$1" "$2"; then
    say "unchanged $2"
  else
    install -D -m "$3" "$1" "$2"
    say "installed $2"
    case "$2" in *.service|*.conf) CHANGED_UNITS=1 ;; esac
  fi
}
# install_once SRC DST MODE: only when DST does not exist (configuration the operator owns).
install_once() {
  if [ -e "$2" ]; then
    say "kept $2 (exists; compare with $1)"
  else
    install -D -m "$3" "$1" "$2"
    say "installed $2"
  fi
}

# 1. the service user
if on_host; then
  if getent passwd dsagent >/dev/null; then
    say "user dsagent exists"
  else
    useradd --system --user-group --home-dir /var/lib/dsagent --no-create-home --shell /usr/sbin/nologin dsagent
    say "created system user dsagent"
  fi
else
  say "skipped the dsagent user (--root $ROOT)"
fi

# 2. directories
for dir in /etc/dsagent /etc/dsagent/rules /var/lib/dsagent; do
  if [ -d "$ROOT$dir" ]; then say "unchanged $ROOT$dir"; else install -d -m 0750 "$ROOT$dir"; say "created $ROOT$dir"; fi
  if on_host; then chown root:dsagent "$ROOT$dir"; fi
done
if on_host; then chown dsagent:dsagent /var/lib/dsagent; fi

# 3. the virtual environment (pip is itself idempotent: an installed, unchanged package is kept)
if [ "$VENV" -eq 1 ]; then
  if [ ! -x "$ROOT/opt/dsagent/bin/python" ]; then
    python3 -m venv "$ROOT/opt/dsagent"
    say "created $ROOT/opt/dsagent"
  fi
  target="$SOURCE"
  if [ "$WITH_SIDECAR" -eq 1 ]; then target="${SOURCE}[sidecar]"; fi
  "$ROOT/opt/dsagent/bin/python" -m pip install --quiet --upgrade "$target"
  say "dsagent installed in $ROOT/opt/dsagent ($("$ROOT/opt/dsagent/bin/dsagent" --help >/dev/null && echo ok))"
else
  say "skipped the virtual environment (--no-venv)"
fi

# 4. units and the opt-in drop-in
UNITS="$ROOT/etc/systemd/system"
install_file "$HERE/dsagent.service" "$UNITS/dsagent.service" 0644
install_file "$HERE/dssidecar.service" "$UNITS/dssidecar.service" 0644
if [ "$GPU_CONTROL" -eq 1 ]; then
  install_file "$HERE/gpu-control.conf" "$UNITS/dsagent.service.d/gpu-control.conf" 0644
elif [ -e "$UNITS/dsagent.service.d/gpu-control.conf" ]; then
  rm -f "$UNITS/dsagent.service.d/gpu-control.conf"
  rmdir "$UNITS/dsagent.service.d" 2>/dev/null || true
  say "removed $UNITS/dsagent.service.d/gpu-control.conf (no --enable-gpu-control)"
  CHANGED_UNITS=1
fi

# 5. configuration the operator owns: written once, never overwritten
install_once "$HERE/config.yaml" "$ROOT/etc/dsagent/config.yaml" 0640
install_once "$HERE/dsagent.env" "$ROOT/etc/dsagent/dsagent.env" 0640
install_once "$HERE/dssidecar.env" "$ROOT/etc/dsagent/dssidecar.env" 0640
# the default packs come with the package (/opt/dsagent/share/dsagent/rules); this is the host's own file
install_once "$HERE/site-rules.yaml" "$ROOT/etc/dsagent/rules/site.yaml" 0640
if on_host; then chgrp -R dsagent /etc/dsagent; fi

# 6. systemd
if on_host && [ -d /run/systemd/system ]; then
  if [ "$CHANGED_UNITS" -eq 1 ]; then systemctl daemon-reload; say "systemctl daemon-reload"; fi
  systemctl enable dsagent.service >/dev/null 2>&1 && say "enabled dsagent.service"
  if [ "$START" -eq 1 ]; then
    if systemctl is-active --quiet dsagent.service; then
      if [ "$CHANGED_UNITS" -eq 1 ]; then systemctl restart dsagent.service; say "restarted dsagent.service"; fi
    else
      systemctl start dsagent.service
      say "started dsagent.service (journalctl -u dsagent -f)"
    fi
  fi
else
  say "skipped systemctl (not the running host's root, or systemd is not running)"
fi
say "done"
