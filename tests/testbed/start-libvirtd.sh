#!/bin/bash
# Starts the KVM test bed's libvirtd (no systemd on these machines): the local socket as usual,
# plus TCP on 127.0.0.1:16509 with SASL (DIGEST-MD5: plain TCP needs a mechanism with a security layer) so remote-URI code paths and platform
# credentials are exercised against the real daemon. User "holdfast", password "testbed-pass".
# Restarts a libvirtd that answers locally but not on TCP. Safe to call when all is up already.
set -euo pipefail
state=/var/tmp/holdfast-testbed
user=holdfast
pass=testbed-pass
tcp_up() { (exec 3<>/dev/tcp/127.0.0.1/16509) 2>/dev/null; }
local_up() { virsh -c qemu:///system version >/dev/null 2>&1; }
if local_up && tcp_up; then exit 0; fi

mkdir -p "$state/sasl2"
cat >"$state/libvirtd.conf" <<CONF
listen_tls = 0
listen_tcp = 1
listen_addr = "127.0.0.1"
tcp_port = "16509"
auth_tcp = "sasl"
CONF
cat >"$state/sasl2/libvirt.conf" <<CONF
mech_list: digest-md5
sasldb_path: $state/sasl2/passwd.db
CONF
echo -n "$pass" | saslpasswd2 -p -a libvirt -f "$state/sasl2/passwd.db" "$user"

if pgrep -x libvirtd >/dev/null; then
  pkill -x libvirtd || true
  for _ in $(seq 50); do pgrep -x libvirtd >/dev/null || break; sleep 0.2; done
fi
pgrep -x virtlogd >/dev/null || virtlogd -d
SASL_CONF_PATH="$state/sasl2" libvirtd -d --listen --config "$state/libvirtd.conf"
for _ in $(seq 100); do local_up && break; sleep 0.2; done
local_up || { echo "libvirtd did not start" >&2; exit 1; }
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/16509) 2>/dev/null && exit 0; sleep 0.2; done
echo "libvirtd does not listen on 127.0.0.1:16509" >&2
exit 1
