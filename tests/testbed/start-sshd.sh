#!/bin/bash
# Starts the KVM test bed's sshd on 127.0.0.1:2222 for qemu+ssh:// URIs (libvirt runs ssh, and
# virt-ssh-helper on the far side, as against a remote host). Its own host key, and one client key
# for root in $state/ssh/id_ed25519 that only this sshd accepts; /etc/ssh is not touched. (The
# tests' URIs say no_verify=1, so ssh adds this host key to root's ~/.ssh/known_hosts.) Safe to
# call when it is up already.
set -euo pipefail
state=/var/tmp/holdfast-testbed/ssh
up() { (exec 3<>/dev/tcp/127.0.0.1/2222) 2>/dev/null; }
mkdir -p "$state"
chmod 700 "$state"
[ -f "$state/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$state/host_ed25519"
[ -f "$state/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C holdfast-testbed -f "$state/id_ed25519"
cp "$state/id_ed25519.pub" "$state/authorized_keys"
cat >"$state/sshd_config" <<CONF
ListenAddress 127.0.0.1:2222
HostKey $state/host_ed25519
PidFile $state/sshd.pid
AuthorizedKeysFile $state/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
CONF
if up; then exit 0; fi
mkdir -p /run/sshd
/usr/sbin/sshd -f "$state/sshd_config"
for _ in $(seq 50); do up && exit 0; sleep 0.2; done
echo "sshd does not listen on 127.0.0.1:2222" >&2
exit 1
