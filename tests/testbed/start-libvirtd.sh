#!/bin/bash
# Starts the KVM test bed's libvirtd (no systemd on these machines): the local socket as usual,
# plus TCP on 127.0.0.1:16509 with SASL (DIGEST-MD5: plain TCP needs a mechanism with a security layer) so remote-URI code paths and platform
# credentials are exercised against the real daemon. User "holdfast", password "testbed-pass".
# Pull-mode backups asked for TLS serve NBD with the certificates in $state/pki/server (a test CA,
# a server certificate for 127.0.0.1, a client certificate in $state/pki/client): qemu.conf
# gains backup_tls_x509_cert_dir and backup_tls_x509_verify lines for that.
# The same CA signs libvirtd's own TLS listener on 127.0.0.1:16514 (qemu+tls://, client
# certificates required: auth_tls none, the certificate is the credential); $state/pki/libvirt-client
# holds the client side under the names libvirt looks for (pkipath=).
# Restarts a libvirtd that answers locally but not on TCP or TLS, or that predates the qemu.conf
# lines.
# Safe to call when all is up already.
set -euo pipefail
state=/var/tmp/holdfast-testbed
user=holdfast
pass=testbed-pass
tcp_up() { (exec 3<>/dev/tcp/127.0.0.1/16509) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/16514) 2>/dev/null; }
local_up() { virsh -c qemu:///system version >/dev/null 2>&1; }
pki="$state/pki"
if [ ! -f "$pki/client/client-key.pem" ]; then
  mkdir -p "$pki/server" "$pki/client"
  key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
  key "$pki/ca-key.pem"
  openssl req -x509 -new -key "$pki/ca-key.pem" -subj "/CN=Holdfast test bed CA" -days 3650 \
    -addext basicConstraints=critical,CA:true -addext keyUsage=critical,keyCertSign,cRLSign -out "$pki/ca-cert.pem"
  sign() { # name CN extensions
    key "$pki/$1-key.pem"
    openssl req -new -key "$pki/$1-key.pem" -subj "/CN=$2" -out "$pki/$1.csr"
    openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca-cert.pem" -CAkey "$pki/ca-key.pem" -CAcreateserial \
      -days 3650 -out "$pki/$1-cert.pem" -extfile <(printf '%s\n' "$3" "keyUsage=critical,digitalSignature,keyEncipherment") 2>/dev/null
  }
  sign server 127.0.0.1 "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"
  sign client holdfast "extendedKeyUsage=clientAuth"
  cp "$pki/ca-cert.pem" "$pki/server/ca-cert.pem"; cp "$pki/ca-cert.pem" "$pki/client/ca-cert.pem"
  mv "$pki/server-cert.pem" "$pki/server-key.pem" "$pki/server/"
  mv "$pki/client-cert.pem" "$pki/client-key.pem" "$pki/client/"
  chmod 755 "$state" "$pki" "$pki/server"; chmod 644 "$pki/server/"*
fi
if [ ! -f "$pki/libvirt-client/clientkey.pem" ]; then
  mkdir -p "$pki/libvirt-client"
  cp "$pki/ca-cert.pem" "$pki/libvirt-client/cacert.pem"
  cp "$pki/client/client-cert.pem" "$pki/libvirt-client/clientcert.pem"
  cp "$pki/client/client-key.pem" "$pki/libvirt-client/clientkey.pem"
fi
qemu_conf=/etc/libvirt/qemu.conf
conf_changed=0
if ! grep -q "^backup_tls_x509_cert_dir = \"$pki/server\"" "$qemu_conf"; then
  sed -i '/^backup_tls_x509_cert_dir\|^backup_tls_x509_verify/d' "$qemu_conf"
  printf 'backup_tls_x509_cert_dir = "%s"\nbackup_tls_x509_verify = 1\n' "$pki/server" >>"$qemu_conf"
  conf_changed=1
fi
if [ $conf_changed = 0 ] && local_up && tcp_up; then exit 0; fi

mkdir -p "$state/sasl2"
cat >"$state/libvirtd.conf" <<CONF
listen_tls = 1
listen_tcp = 1
listen_addr = "127.0.0.1"
tcp_port = "16509"
auth_tcp = "sasl"
tls_port = "16514"
auth_tls = "none"
ca_file = "$pki/ca-cert.pem"
cert_file = "$pki/server/server-cert.pem"
key_file = "$pki/server/server-key.pem"
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
for _ in $(seq 50); do tcp_up && exit 0; sleep 0.2; done
echo "libvirtd does not listen on 127.0.0.1:16509 (TCP) and 16514 (TLS)" >&2
exit 1
