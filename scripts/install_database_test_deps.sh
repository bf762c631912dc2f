#!/usr/bin/env bash
# Installs what the database tracking tests (tests/test_tracking_databases.py, marker `database`) need
# from the system: Debian's PostgreSQL and MariaDB servers. Idempotent: does nothing when both are
# present. Never starts the system's database services: the tests start their own server processes
# in a temporary folder, bound to 127.0.0.1 on a free port, and stop them.
#
#   bash scripts/install_database_test_deps.sh        # as root, or as a user with sudo
set -euo pipefail

need=()
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null && compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null ||
    need+=(postgresql)
{ [ -x /usr/sbin/mariadbd ] && command -v mariadb-install-db >/dev/null 2>&1; } || need+=(mariadb-server)
if [ "${#need[@]}" -eq 0 ]; then
    echo "install_database_test_deps: PostgreSQL and MariaDB servers are present"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo -n)
else
    echo "install_database_test_deps: need root (or sudo) to apt-get install ${need[*]}" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_database_test_deps: apt-get not found; install ${need[*]} with this system's package manager" >&2
    exit 1
fi

# Keep apt from starting the system's database services (containers usually forbid it already with
# policy-rc.d).
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
    "${as_root[@]}" chmod 755 "$policy"
    made_policy=1
fi
cleanup() { if [ "$made_policy" -eq 1 ]; then "${as_root[@]}" rm -f "$policy"; fi; }
trap cleanup EXIT

echo "install_database_test_deps: apt-get install ${need[*]}"
install() { "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"; }
if ! install; then
    "${as_root[@]}" apt-get update -q
    install
fi
