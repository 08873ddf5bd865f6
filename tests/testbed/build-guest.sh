#!/bin/bash
# Builds (once) the test bed's bootable guest: Debian bookworm minbase with a kernel, systemd and
# the QEMU guest agent, as an ext4 root filesystem image (no partition table: root=/dev/vda) in
# qcow2, plus the kernel and initrd for direct boot. Used by the quiesce tests, which need an
# agent that really freezes filesystems. About a minute with a warm Debian mirror; cached in
# $out until this script changes.
set -euo pipefail
out=/var/tmp/holdfast-testbed/guest
stamp=$(sha256sum "$0" | cut -c1-16)
[ -f "$out/ready-$stamp" ] && exit 0
rm -rf "$out"; mkdir -p "$out"
root="$out/root"
debootstrap --variant=minbase --include=linux-image-amd64,systemd-sysv,udev,qemu-guest-agent \
  bookworm "$root" http://deb.debian.org/debian >"$out/debootstrap.log" 2>&1 \
  || { tail -20 "$out/debootstrap.log" >&2; exit 1; }
echo "hf-guest" >"$root/etc/hostname"
# Nothing to wait for at boot: no network, no getty on the serial line.
ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"
ln -sf /dev/null "$root/etc/systemd/system/systemd-networkd-wait-online.service"
cp "$root"/boot/vmlinuz-* "$out/vmlinuz"
cp "$root"/boot/initrd.img-* "$out/initrd.img"
chmod 644 "$out/vmlinuz" "$out/initrd.img"
rm -rf "$root"/var/cache/apt/archives/*.deb
mkfs.ext4 -q -F -L hfroot -d "$root" "$out/root.raw" 1536M
qemu-img convert -f raw -O qcow2 "$out/root.raw" "$out/root.qcow2"
rm -rf "$root" "$out/root.raw"
chmod 755 "$out"; chmod 644 "$out/root.qcow2"
touch "$out/ready-$stamp"
