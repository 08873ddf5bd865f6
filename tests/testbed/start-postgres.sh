#!/bin/bash
# Starts the test bed's PostgreSQL (Debian's cluster, no systemd here) and makes sure role
# "holdfast" (password "testbed-pass", may create databases) exists. The catalog tests create
# one database each over TCP on 127.0.0.1:5432.
set -euo pipefail
ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
[ -n "$ver" ] || { echo "PostgreSQL is not installed (package postgresql)" >&2; exit 1; }
pg_lsclusters -h | awk '{print $1, $2}' | grep -qx "$ver main" || pg_createcluster "$ver" main >/dev/null
pg_lsclusters -h | awk -v v="$ver" '$1 == v && $2 == "main" {print $4}' | grep -q online || pg_ctlcluster "$ver" main start
for _ in $(seq 50); do su postgres -c "psql -tAc 'SELECT 1'" >/dev/null 2>&1 && break; sleep 0.2; done
if ! su postgres -c "psql -tAc \"SELECT 1 FROM pg_roles WHERE rolname = 'holdfast'\"" | grep -q 1; then
  su postgres -c "psql -qc \"CREATE ROLE holdfast LOGIN CREATEDB PASSWORD 'testbed-pass'\""
fi
