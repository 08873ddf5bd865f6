#!/bin/bash
# Builds (once) a bootable whole-disk image of the test bed's Debian guest (build-guest.sh): an
# MBR partition table with extlinux, the guest's ext4 root as its one partition (label hfroot),
# booting with root=LABEL=hfroot so the guest comes up on whatever bus a platform gives the disk
# (its initramfs has Debian's usual drivers: virtio, SATA, SCSI incl. VMware's pvscsi). At
# multi-user it writes HOLDFAST-GUEST-MULTI-USER to its serial console. The cross-platform tests
# place it as a VMware VM's disk and boot the restored VM on KVM. Cached until this script or
# build-guest.sh changes. Prints the image's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# Only the image's path goes to standard output (the caller reads it); what building prints goes
# to standard error.
exec 3>&1 1>&2
bash "$here/build-guest.sh"
src=/var/tmp/holdfast-testbed/guest
out=/var/tmp/holdfast-testbed/bootdisk
stamp=$(cat "$0" "$here/build-guest.sh" | sha256sum | cut -c1-16)
if [ ! -f "$out/ready-$stamp" ]; then
  # What is used, not what dpkg remembers (a removed package's config keeps it "known").
  if ! command -v extlinux >/dev/null || [ ! -f /usr/lib/syslinux/mbr/mbr.bin ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq extlinux syslinux-common >/dev/null
  fi
  mnt="$out/mnt"
  umount "$mnt" 2>/dev/null || true
  rm -rf "$out"; mkdir -p "$mnt"
  qemu-img convert -f qcow2 -O raw "$src/root.qcow2" "$out/root.fs"
  fs_mib=$(( $(stat -c %s "$out/root.fs") / 1048576 ))
  truncate -s $(( fs_mib + 2 ))M "$out/disk.raw"
  echo 'start=2048, type=83, bootable' | sfdisk -q "$out/disk.raw"
  dd if="$out/root.fs" of="$out/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
  rm -f "$out/root.fs"
  mount -o loop,offset=1048576 "$out/disk.raw" "$mnt"
  trap 'umount "$mnt" 2>/dev/null || true' EXIT
  kernel=$(cd "$mnt/boot" && ls vmlinuz-* | head -1)
  initrd=$(cd "$mnt/boot" && ls initrd.img-* | head -1)
  mkdir -p "$mnt/boot/extlinux"
  cat >"$mnt/boot/extlinux/extlinux.conf" <<CONF
DEFAULT debian
TIMEOUT 1
LABEL debian
  KERNEL /boot/$kernel
  APPEND initrd=/boot/$initrd root=LABEL=hfroot rw console=ttyS0 quiet
CONF
  extlinux --install "$mnt/boot/extlinux" >/dev/null
  cat >"$mnt/etc/systemd/system/hf-marker.service" <<UNIT
[Unit]
Description=Tell the test bed the guest reached multi-user
After=basic.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo HOLDFAST-GUEST-MULTI-USER > /dev/ttyS0'

[Install]
WantedBy=multi-user.target
UNIT
  ln -sf /etc/systemd/system/hf-marker.service "$mnt/etc/systemd/system/multi-user.target.wants/hf-marker.service"
  umount "$mnt"; trap - EXIT
  dd if=/usr/lib/syslinux/mbr/mbr.bin of="$out/disk.raw" bs=440 count=1 conv=notrunc status=none
  chmod 755 "$out"; chmod 644 "$out/disk.raw"
  touch "$out/ready-$stamp"
fi
echo "$out/disk.raw" >&3
