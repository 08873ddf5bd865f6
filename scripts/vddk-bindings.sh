#!/usr/bin/env bash
# Regenerates connectors/vmware-vddk-sys/src/bindings.rs from the header we wrote from VMware's
# public VDDK reference (connectors/vmware-vddk-sys/vixDiskLib.h) with bindgen, for run-time
# loading (the library is opened from the directory an admin configures, never linked). The
# output is committed, so building Holdfast needs neither libclang nor bindgen; run this after
# changing the header. Installs libclang and bindgen-cli (under /var/tmp/bindgen) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
dpkg -s libclang-dev >/dev/null 2>&1 || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev; }
BINDGEN=/var/tmp/bindgen/bin/bindgen
[ -x "$BINDGEN" ] || cargo install bindgen-cli --version 0.71.1 --locked --root /var/tmp/bindgen
"$BINDGEN" connectors/vmware-vddk-sys/vixDiskLib.h \
  --dynamic-loading VixDiskLib \
  --allowlist-function 'VixDiskLib_.*' --allowlist-type 'VixDiskLib.*|VixError' --allowlist-var 'VIX.*' \
  --no-doc-comments --use-core \
  -o connectors/vmware-vddk-sys/src/bindings.rs
echo "wrote connectors/vmware-vddk-sys/src/bindings.rs"
