#!/usr/bin/env bash
# KVM benchmark: Holdfast against virtnbdbackup on the same VM and the same realistic disk (the
# store benchmark's Debian image; day 2 replays its changed ranges as guest writes through
# QEMU, so every tool's dirty bitmap sees them). In one run: full and incremental wall and CPU
# time, stored bytes, and restore time. Prints a Markdown report.
#
#   tests/bench/kvm-bench.sh          (as root; starts libvirtd if needed)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
W=${BENCH_DIR:-/var/tmp/hfbench}
K="$W/kvm"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/holdfast-target}"
tool="python3 $here/imagetool.py"
URI=qemu:///system
VM=hfbench

BENCH_IMAGES_ONLY=1 "$here/store-bench.sh"
missing=(); for p in virtnbdbackup qemu-system-x86 libvirt-daemon-system libvirt-clients time; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; fi
bash "$repo/tests/testbed/start-libvirtd.sh"
(cd "$repo" && cargo build --release -p appliance --quiet)
HF="$CARGO_TARGET_DIR/release/holdfast"

virsh -c $URI destroy $VM >/dev/null 2>&1 || true
virsh -c $URI undefine --checkpoints-metadata $VM >/dev/null 2>&1 || true
for r in $VM-r $VM-r2; do
  virsh -c $URI destroy $r >/dev/null 2>&1 || true
  virsh -c $URI undefine $r >/dev/null 2>&1 || true
done
virsh -c $URI pool-destroy $VM-pool >/dev/null 2>&1 || true
umount "$K" 2>/dev/null || true
rm -rf "$K"; rm -f "$W/kvm-fs.img"
# Every tool writes to a freshly made ext4: no tool pays for files an earlier run deleted
# (ext4 slows inode allocation after mass deletes; see docs/BENCHMARKS.md).
truncate -s 16G "$W/kvm-fs.img"
# Inode tables and journal initialised now, not by ext4lazyinit in the background of the
# first tool's run.
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$W/kvm-fs.img"
mkdir -p "$K"
mount -o loop "$W/kvm-fs.img" "$K"
mkdir -p "$K/pool"; chmod 755 "$W" "$K" "$K/pool"
qemu-img convert -f raw -O qcow2 "$W/disk1.raw" "$K/template.qcow2"
# The idle guest's boot floppy: a boot sector that halts the CPU with interrupts on.
python3 -c 'import sys; b = bytearray(1474560); b[0:4] = b"\xfb\xf4\xeb\xfd"; b[510:512] = b"\x55\xaa"; open(sys.argv[1], "wb").write(b)' "$K/idle.img"
$tool apply-plan "$W/disk2.raw" "$W/changed.txt" "$K/delta" > "$K/plan.txt"
chmod 755 "$K/delta"

# Each timed run is followed by a timed `sync`: a backup is only safe once it is on disk, and the
# tools differ there (Holdfast syncs its store before it commits a point; virtnbdbackup and
# virtnbdrestore never sync, so their data is still in the page cache when they exit). "wall"
# is the tool's own time, "on disk" adds the flush of what it left unwritten.
timed() {
  local name=$1; shift
  /usr/bin/time -f "%e %U %S %M" -o "$K/t.$name" "$@" >"$K/out.$name" 2>"$K/err.$name" || { cat "$K/err.$name" >&2; exit 1; }
  /usr/bin/time -f "%e" -o "$K/s.$name" sync
}
wall() { awk '{print $1}' "$K/t.$1"; }
ondisk() { awk -v s="$(cat "$K/s.$1")" '{printf "%.2f", $1 + s}' "$K/t.$1"; }
cpu() { awk '{printf "%.1f", $2 + $3}' "$K/t.$1"; }
rss() { awk '{printf "%.0f", $4 / 1024}' "$K/t.$1"; }
bytes() { du -sb "$1" | awk '{print $1}'; }
mb() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1e6}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

# Every timed run starts alike: dirty data flushed, the page cache dropped (a cache full of an
# earlier step's files made the first tool after a build pay for reclaim: Holdfast's full took
# 4.2 s right after a release build and 2.8 s in the next run), then the run's own input read
# once, so each tool starts warm on what it reads and cold on everything else.
settle() {
  sync
  echo 3 > /proc/sys/vm/drop_caches
  find "$@" -type f -exec cat {} + > /dev/null
}

# A fresh VM on the day-1 disk, started and left to settle. The disk carries the image's MBR:
# a partition table with an all-zero boot code, which the BIOS boots and the vCPU then executes
# (zero bytes are valid x86), spinning a whole core of the two. An idle guest is what a real
# site's backup appliance sees (the guests' CPU is the hypervisor host's), so by default the VM
# boots first from a floppy whose boot sector halts the CPU (sti; hlt; jmp back), and the
# benchmark waits until the guest is idle. `fresh_vm busy` leaves the floppy out: the guest
# spins, and each tool has one core.
fresh_vm() {
  virsh -c $URI destroy $VM >/dev/null 2>&1 || true
  virsh -c $URI undefine --checkpoints-metadata $VM >/dev/null 2>&1 || true
  cp "$K/template.qcow2" "$K/vm.qcow2"
  local floppy="<disk type='file' device='floppy'><driver name='qemu' type='raw'/><source file='$K/idle.img'/><target dev='fda' bus='fdc'/><readonly/></disk>"
  [ "${1:-idle}" = busy ] && floppy=
  cat > "$K/vm.xml" <<XML
<domain type='kvm'><name>$VM</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='fd'/><boot dev='hd'/></os>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$K/vm.qcow2'/>
<target dev='vda' bus='virtio'/></disk>$floppy</devices></domain>
XML
  virsh -c $URI define "$K/vm.xml" >/dev/null
  virsh -c $URI start $VM >/dev/null
  guest_cpu "${1:-idle}"
  # The copy's writeback must not land in the next tool's run (Holdfast's final syncfs would
  # otherwise wait for the VM's 650 MB disk copy, which shares the filesystem).
  settle "$K/vm.qcow2"
}

# Waits for the guest's boot (about 2 CPU-seconds of BIOS) to end, then checks that its QEMU
# uses what the run asks: under 10% of a core when idle, over 80% when busy.
guest_cpu() {
  local pid ticks hz want=$1 used
  pid=$(cat /run/libvirt/qemu/$VM.pid)
  hz=$(getconf CLK_TCK)
  ticks() { awk '{print $14 + $15}' /proc/$pid/stat; }
  for _ in $(seq 1 40); do
    used=$(( -$(ticks) )); sleep 0.5; used=$(( used + $(ticks) ))
    if [ "$want" = idle ] && [ $((used * 100)) -lt $((hz * 5)) ]; then return; fi
    if [ "$want" = busy ] && [ $((used * 100)) -gt $((hz * 40)) ]; then return; fi
  done
  echo "the benchmark VM did not become $want: its QEMU used $used ticks in the last 0.5 s" >&2
  exit 1
}

# Day 2: every changed range written by the "guest" through QEMU's block layer.
day2() {
  while read -r file off len; do
    virsh -c $URI qemu-monitor-command $VM --hmp \
      "qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"write -s $file $off $len\"" >/dev/null
  done < "$K/plan.txt"
  settle "$K/vm.qcow2"
}

# Holdfast
fresh_vm
"$HF" store --store "$K/hf" init >/dev/null
timed hf.full "$HF" platform --kind kvm --set uri=$URI --work-dir "$K/work" backup --vm $VM --type full --store "$K/hf"
hf_full_bytes=$(bytes "$K/hf")
day2
timed hf.inc "$HF" platform --kind kvm --set uri=$URI --work-dir "$K/work" backup --vm $VM --type incremental --store "$K/hf" --json
hf_bytes=$(bytes "$K/hf")
point=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["point"]["point_id"])' "$K/out.hf.inc")

# Holdfast full with zstd level 1: the speed/size trade-off the store's level setting offers.
fresh_vm
"$HF" store --store "$K/hf1" init --zstd-level 1 >/dev/null
timed hf1.full "$HF" platform --kind kvm --set uri=$URI --work-dir "$K/work" backup --vm $VM --type full --store "$K/hf1"
hf1_full_bytes=$(bytes "$K/hf1")
# How small per-chunk compression gets on this disk at a much higher level (zstd 9), without
# timing it as a backup: the bound for the stored-bytes target short of cross-VM dedupe.
"$HF" store --store "$K/hf9" init --zstd-level 9 >/dev/null
"$HF" store --store "$K/hf9" ingest --vm bound --disk vda="$W/disk1.raw" >/dev/null
hf9_full_bytes=$(bytes "$K/hf9")

# virtnbdbackup, plain, then compressed
fresh_vm
timed vnb.full virtnbdbackup -U $URI -d $VM -l full -o "$K/vnb"
vnb_full_bytes=$(bytes "$K/vnb")
day2
timed vnb.inc virtnbdbackup -U $URI -d $VM -l inc -o "$K/vnb"
vnb_bytes=$(bytes "$K/vnb")
fresh_vm
timed vnbz.full virtnbdbackup -U $URI -d $VM -l full -z -o "$K/vnbz"
vnbz_full_bytes=$(bytes "$K/vnbz")
day2
timed vnbz.inc virtnbdbackup -U $URI -d $VM -l inc -z -o "$K/vnbz"
vnbz_bytes=$(bytes "$K/vnbz")

# The same fulls with the guest busy: its vCPU spinning one of the two cores the tools share.
fresh_vm busy
"$HF" store --store "$K/hfb" init >/dev/null
timed hfb.full "$HF" platform --kind kvm --set uri=$URI --work-dir "$K/work" backup --vm $VM --type full --store "$K/hfb"
fresh_vm busy
timed vnbb.full virtnbdbackup -U $URI -d $VM -l full -o "$K/vnbb"

# A second full of the same disk (a weekly full, or a second VM made from the same template):
# where dedupe has something to find. Holdfast into its store beside the chain above;
# virtnbdbackup --compress as a new full beside its chain.
fresh_vm
timed hf.full2 "$HF" platform --kind kvm --set uri=$URI --work-dir "$K/work" backup --vm $VM --type full --store "$K/hf"
hf2_bytes=$(bytes "$K/hf")
fresh_vm
timed vnbz.full2 virtnbdbackup -U $URI -d $VM -l full -z -o "$K/vnbz2"
vnbz2_bytes=$(( vnbz_bytes + $(bytes "$K/vnbz2") ))

# Restores of the day-2 state: Holdfast as a new VM in a pool; virtnbdrestore to image files.
virsh -c $URI pool-create-as $VM-pool dir --target "$K/pool" >/dev/null
settle "$K/hf"
timed hf.restore "$HF" platform --kind kvm --set uri=$URI restore --point "$point" --name $VM-r --pool $VM-pool --store "$K/hf"
qemu-img compare -q "$K/pool/$VM-r-vda.qcow2" "$W/disk2.raw" || { echo "Holdfast's restore differs from the day-2 disk" >&2; exit 1; }
settle "$K/hf"
timed hf.restore.raw "$HF" platform --kind kvm --set uri=$URI restore --point "$point" --name $VM-r2 --pool $VM-pool --disk-format raw --store "$K/hf"
cmp "$K/pool/$VM-r2-vda.raw" "$W/disk2.raw" || { echo "Holdfast's raw restore differs from the day-2 disk" >&2; exit 1; }
settle "$K/vnb"
timed vnb.restore virtnbdrestore -i "$K/vnb" -o "$K/vnbrestore"
restored=$(find "$K/vnbrestore" -maxdepth 1 -type f -name '*.qcow2' | head -1)
qemu-img compare -q "$restored" "$W/disk2.raw" || { echo "virtnbdrestore's restore differs from the day-2 disk" >&2; exit 1; }

cat <<REPORT
## KVM benchmark: $(date -u +%Y-%m-%d), $(nproc) cores, libvirt $(virsh -c $URI version | awk '/Using library/ {print $4}'), QEMU $(virsh -c $URI version | awk '/Running hypervisor/ {print $4}'), virtnbdbackup $(virtnbdbackup -V 2>&1 | tail -1)

One VM, one 4 GiB virtio disk holding the store benchmark's image ($(mb "$($tool allocated-bytes "$W/disk1.raw")") MB allocated); day 2 replays
$(wc -l < "$K/plan.txt") changed ranges ($(mb "$(awk '{s += $3} END {print s}' "$K/plan.txt")") MB) as guest writes. Times are the client's wall and CPU time; each run
starts with the page cache dropped and its own input read once.

| run | wall s | on disk s | CPU s | peak RSS MiB | stored MB after |
|---|---|---|---|---|---|
| Holdfast full | $(wall hf.full) | $(ondisk hf.full) | $(cpu hf.full) | $(rss hf.full) | $(mb "$hf_full_bytes") |
| Holdfast incremental | $(wall hf.inc) | $(ondisk hf.inc) | $(cpu hf.inc) | $(rss hf.inc) | $(mb "$hf_bytes") |
| Holdfast full, store at zstd level 1 | $(wall hf1.full) | $(ondisk hf1.full) | $(cpu hf1.full) | $(rss hf1.full) | $(mb "$hf1_full_bytes") |
| (day-1 image into a zstd level 9 store, size only) | | | | | $(mb "$hf9_full_bytes") |
| virtnbdbackup full | $(wall vnb.full) | $(ondisk vnb.full) | $(cpu vnb.full) | $(rss vnb.full) | $(mb "$vnb_full_bytes") |
| virtnbdbackup incremental | $(wall vnb.inc) | $(ondisk vnb.inc) | $(cpu vnb.inc) | $(rss vnb.inc) | $(mb "$vnb_bytes") |
| virtnbdbackup --compress full | $(wall vnbz.full) | $(ondisk vnbz.full) | $(cpu vnbz.full) | $(rss vnbz.full) | $(mb "$vnbz_full_bytes") |
| Holdfast full, guest busy | $(wall hfb.full) | $(ondisk hfb.full) | $(cpu hfb.full) | $(rss hfb.full) | |
| virtnbdbackup full, guest busy | $(wall vnbb.full) | $(ondisk vnbb.full) | $(cpu vnbb.full) | $(rss vnbb.full) | |
| virtnbdbackup --compress incremental | $(wall vnbz.inc) | $(ondisk vnbz.inc) | $(cpu vnbz.inc) | $(rss vnbz.inc) | $(mb "$vnbz_bytes") |
| Holdfast second full of the same disk, into the same store | $(wall hf.full2) | $(ondisk hf.full2) | $(cpu hf.full2) | $(rss hf.full2) | $(mb "$hf2_bytes") |
| virtnbdbackup --compress second full | $(wall vnbz.full2) | $(ondisk vnbz.full2) | $(cpu vnbz.full2) | $(rss vnbz.full2) | $(mb "$vnbz2_bytes") |
| Holdfast restore as a new VM (qcow2 volume) | $(wall hf.restore) | $(ondisk hf.restore) | $(cpu hf.restore) | $(rss hf.restore) | |
| Holdfast restore as a new VM (sparse raw volume) | $(wall hf.restore.raw) | $(ondisk hf.restore.raw) | $(cpu hf.restore.raw) | $(rss hf.restore.raw) | |
| virtnbdrestore to an image file | $(wall vnb.restore) | $(ondisk vnb.restore) | $(cpu vnb.restore) | $(rss vnb.restore) | |

Ratios (same run; "on disk" counts each tool until its data is on disk):
- full: virtnbdbackup time / Holdfast time = $(ratio "$(wall vnb.full)" "$(wall hf.full)") (target >= 1), on disk $(ratio "$(ondisk vnb.full)" "$(ondisk hf.full)"); at zstd level 1: $(ratio "$(wall vnb.full)" "$(wall hf1.full)"), on disk $(ratio "$(ondisk vnb.full)" "$(ondisk hf1.full)")
- full with the guest busy (its vCPU spinning one of the two cores): virtnbdbackup / Holdfast = $(ratio "$(wall vnbb.full)" "$(wall hfb.full)"), on disk $(ratio "$(ondisk vnbb.full)" "$(ondisk hfb.full)")
- stored after the full: Holdfast / virtnbdbackup --compress = $(ratio "$hf_full_bytes" "$vnbz_full_bytes"); at zstd level 9: $(ratio "$hf9_full_bytes" "$vnbz_full_bytes")
- stored after full + incremental: Holdfast / virtnbdbackup --compress = $(ratio "$hf_bytes" "$vnbz_bytes") (target <= 0.75)
- stored after full + incremental + a second full of the same disk (not the issue's target: what dedupe adds): Holdfast / virtnbdbackup --compress = $(ratio "$hf2_bytes" "$vnbz2_bytes")
- incremental: virtnbdbackup time / Holdfast time = $(ratio "$(wall vnb.inc)" "$(wall hf.inc)") (target >= 1), on disk $(ratio "$(ondisk vnb.inc)" "$(ondisk hf.inc)")
- restore: virtnbdrestore time / Holdfast time = $(ratio "$(wall vnb.restore)" "$(wall hf.restore)") as qcow2, $(ratio "$(wall vnb.restore)" "$(wall hf.restore.raw)") as raw (target >= 2); on disk $(ratio "$(ondisk vnb.restore)" "$(ondisk hf.restore)") and $(ratio "$(ondisk vnb.restore)" "$(ondisk hf.restore.raw)")
REPORT

virsh -c $URI destroy $VM >/dev/null 2>&1 || true
virsh -c $URI undefine --checkpoints-metadata $VM >/dev/null 2>&1 || true
virsh -c $URI undefine $VM-r >/dev/null 2>&1 || true
virsh -c $URI undefine $VM-r2 >/dev/null 2>&1 || true
virsh -c $URI pool-destroy $VM-pool >/dev/null 2>&1 || true
umount "$K"
rm -rf "$K" "$W/kvm-fs.img"
