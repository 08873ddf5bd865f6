#!/usr/bin/env bash
# Store benchmark: Holdfast side by side with borg (zstd,3), restic and zstd alone, in one run,
# on a realistic disk image (a Debian rootfs plus mixed files in an ext4 partition of a 4 GiB
# sparse disk) and its day-2 copy with about 3% of blocks changed. Prints a Markdown report.
#
#   tests/bench/store-bench.sh            # the comparison
#   BENCH_SWEEP=1 tests/bench/store-bench.sh   # also sweep extent size, chunk size, zstd level
#
# Work files go to $BENCH_DIR (default /var/tmp/hfbench); the images are built once and reused.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
W=${BENCH_DIR:-/var/tmp/hfbench}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/holdfast-target}"
mkdir -p "$W"
tool="python3 $here/imagetool.py"

pkgs=(borgbackup restic zstd debootstrap e2fsprogs fdisk time b3sum openssl)
missing=(); for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; fi
(cd "$repo" && cargo build --release -p appliance --quiet)
HF="$CARGO_TARGET_DIR/release/holdfast"

# ---- images -------------------------------------------------------------------------------
PART_OFF=$((1 << 20))
if [ ! -f "$W/images.done" ]; then
  echo "building images in $W" >&2
  [ -f "$W/rootfs/etc/debian_version" ] || debootstrap --variant=minbase bookworm "$W/rootfs" http://deb.debian.org/debian >/dev/null
  rm -rf "$W/tree" && cp -a "$W/rootfs" "$W/tree"
  $tool mixed "$W/tree" 1
  rm -f "$W/part.img" "$W/disk1.raw"
  mkfs.ext4 -q -b 4096 -d "$W/tree" "$W/part.img" 4095M >/dev/null
  truncate -s 4G "$W/disk1.raw"
  echo 'label: dos
start=2048, type=83' | sfdisk -q "$W/disk1.raw"
  dd if="$W/part.img" of="$W/disk1.raw" bs=1M seek=1 conv=sparse,notrunc status=none
  rm -f "$W/part.img"
  cp --sparse=always "$W/disk1.raw" "$W/disk2.raw"
  mkdir -p "$W/mnt"
  mount -o loop,offset=$PART_OFF "$W/disk2.raw" "$W/mnt"
  $tool day2 "$W/mnt" 2
  umount "$W/mnt"
  $tool changed "$W/disk1.raw" "$W/disk2.raw" > "$W/changed.txt"
  $tool alloc "$W/disk1.raw" "$W/alloc1.bin"
  touch "$W/images.done"
fi
[ "${BENCH_IMAGES_ONLY:-0}" = 1 ] && exit 0
alloc1=$($tool allocated-bytes "$W/disk1.raw")
alloc2=$($tool allocated-bytes "$W/disk2.raw")
logical=$(stat -c %s "$W/disk1.raw")
changed=$(awk '{s += $2} END {print s + 0}' "$W/changed.txt")
changed4k=$($tool changed "$W/disk1.raw" "$W/disk2.raw" 4096 | awk '{s += $2} END {print s + 0}')

# ---- helpers --------------------------------------------------------------------------------
# timed NAME CMD...: runs CMD, records wall seconds, CPU seconds and peak RSS (KiB) in $W/t.NAME
timed() {
  local name=$1; shift
  /usr/bin/time -f "%e %U %S %M" -o "$W/t.$name" "$@" >/dev/null 2>"$W/err.$name" || { cat "$W/err.$name" >&2; exit 1; }
}
# median NAME: keeps, of $W/t.NAME.1..3, the run with the median wall time as $W/t.NAME
median() {
  sort -n "$W/t.$1".[123] | sed -n 2p > "$W/t.$1"
}
wall() { awk '{print $1}' "$W/t.$1"; }
cpu() { awk '{printf "%.1f", $2 + $3}' "$W/t.$1"; }
rss() { awk '{printf "%.0f", $4 / 1024}' "$W/t.$1"; }
mbs() { awk -v b="$1" -v s="$2" 'BEGIN {printf "%.0f", b / 1e6 / s}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
bytes() { du -sb "$1" | awk '{print $1}'; }
diskuse() { du -s --block-size=1 "$1" | awk '{print $1}'; }
mb() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1e6}'; }
warm() { cat "$@" >/dev/null; }

R="$W/runs"
if [ -d "$R" ]; then
  rm -rf "$R"; sync
  # ext4 avoids reusing inodes freed in the last 30 s, which slows file creation right after a
  # mass delete: let that pass so no tool pays for the previous run.
  sleep 31
fi
mkdir -p "$R"
# Start from a clean page cache (a full cache makes every tool pay for reclaim), then warm the inputs.
sync; echo 1 > /proc/sys/vm/drop_caches 2>/dev/null || echo "could not drop caches (not root?): figures may be noisier" >&2
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export RESTIC_PASSWORD=bench
threads=$(nproc)

# ---- the comparison -----------------------------------------------------------------------
warm "$W/disk1.raw" "$W/disk2.raw" "$W/alloc1.bin"
# Holdfast and zstd three times each, interleaved, medians reported: this machine is shared.
for rep in 1 2 3; do
  timed "zstd.$rep" zstd -T0 -3 -q -c "$W/alloc1.bin"
  "$HF" store --store "$R/hf$rep" init >/dev/null
  timed "hf1.$rep" "$HF" store --store "$R/hf$rep" ingest --vm bench --disk "vda=$W/disk1.raw" --threads "$threads"
  timed "hf2.$rep" "$HF" store --store "$R/hf$rep" ingest --vm bench --disk "vda=$W/disk2.raw" --threads "$threads" \
    --type incremental --parent latest --changed "vda=$W/changed.txt"
done
median zstd; median hf1; median hf2
# Stored bytes: a fresh store, full then incremental, measured between the two.
"$HF" store --store "$R/hf" init >/dev/null
"$HF" store --store "$R/hf" ingest --vm bench --disk "vda=$W/disk1.raw" --threads "$threads" >/dev/null
hf1_bytes=$(bytes "$R/hf"); hf1_disk=$(diskuse "$R/hf")
"$HF" store --store "$R/hf" ingest --vm bench --disk "vda=$W/disk2.raw" --threads "$threads" \
  --type incremental --parent latest --changed "vda=$W/changed.txt" >/dev/null
hf2_bytes=$(bytes "$R/hf"); hf2_disk=$(diskuse "$R/hf")
point=$("$HF" store --store "$R/hf" ls --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["points"][-1]["point_id"])')
"$HF" store --store "$R/hf" export "$point" --disk vda --out "$R/export.raw" >/dev/null
cmp "$R/export.raw" "$W/disk2.raw" || { echo "export differs from the day-2 image" >&2; exit 1; }
for rep in 1 2 3; do
  timed "hfx.$rep" "$HF" store --store "$R/hf" export "$point" --disk vda --out "$R/export.raw" --threads "$threads"
  timed "hfxn.$rep" "$HF" store --store "$R/hf" export "$point" --disk vda --out "$R/export.raw" --threads "$threads" --no-sync
done
median hfx; median hfxn
rm -f "$R/export.raw"

printf 'bench\n' > "$R/pass"
"$HF" store --store "$R/hfe" --passphrase-file "$R/pass" init --encrypt >/dev/null
timed hfe1 "$HF" store --store "$R/hfe" --passphrase-file "$R/pass" ingest --vm bench --disk "vda=$W/disk1.raw" --threads "$threads"
timed hfe2 "$HF" store --store "$R/hfe" --passphrase-file "$R/pass" ingest --vm bench --disk "vda=$W/disk2.raw" \
  --threads "$threads" --type incremental --parent latest --changed "vda=$W/changed.txt"
hfe2_bytes=$(bytes "$R/hfe")

borg init -e none "$R/borg"
timed borg1 borg create --compression zstd,3 "$R/borg::day1" "$W/disk1.raw"
borg1_bytes=$(bytes "$R/borg"); borg1_disk=$(diskuse "$R/borg")
timed borg2 borg create --compression zstd,3 "$R/borg::day2" "$W/disk2.raw"
borg2_bytes=$(bytes "$R/borg"); borg2_disk=$(diskuse "$R/borg")

restic init -q --repo "$R/restic" --repository-version 2
timed restic1 restic backup -q --repo "$R/restic" "$W/disk1.raw"
restic1_bytes=$(bytes "$R/restic"); restic1_disk=$(diskuse "$R/restic")
timed restic2 restic backup -q --repo "$R/restic" "$W/disk2.raw"
restic2_bytes=$(bytes "$R/restic"); restic2_disk=$(diskuse "$R/restic")

# ---- peak memory on a 100 GiB sparse disk ----------------------------------------------------
G=$((1 << 30))
$tool place "$W/disk1.raw" "$R/big.raw" $((100 * G)) 0 $((33 * G)) $((66 * G)) $((96 * G))
big_alloc=$($tool allocated-bytes "$R/big.raw")
"$HF" store --store "$R/hfbig" init >/dev/null
timed hfbig "$HF" store --store "$R/hfbig" ingest --vm big --disk "vda=$R/big.raw" --threads "$threads"

# ---- hashes, one core -------------------------------------------------------------------------
timed b3 b3sum --num-threads 1 "$W/alloc1.bin"
timed sha openssl dgst -sha256 "$W/alloc1.bin"

# ---- report -----------------------------------------------------------------------------------
cat <<REPORT
## Store benchmark: $(date -u +%Y-%m-%d), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -r)

Holdfast and zstd rows are the median of three interleaved runs; borg and restic ran once.
Image: $(mb "$logical") MB logical, $(mb "$alloc1") MB allocated (Debian bookworm minbase + mixed
files in ext4); day 2: $(mb "$alloc2") MB allocated; $(mb "$changed4k") MB in changed 4 KiB blocks
($(awk -v c="$changed4k" -v a="$alloc1" 'BEGIN {printf "%.1f", 100 * c / a}')% of allocated), reported to the tools as $(mb "$changed") MB of changed 64 KiB
blocks (QEMU's default dirty-bitmap granularity). Warm page cache for every tool.
Holdfast $threads threads, zstd 3, 4 MiB extents, 64 KiB average chunks; borg $(borg --version | awk '{print $2}') zstd,3;
restic $(restic version | awk '{print $2}') repository v2 (compression auto, always encrypted).

| run | wall s | CPU s | logical MB/s | allocated MB/s | peak RSS MiB | stored MB (du -sb) | on disk MB |
|---|---|---|---|---|---|---|---|
| zstd -T0 -3 of the allocated data | $(wall zstd) | $(cpu zstd) | | $(mbs "$alloc1" "$(wall zstd)") | $(rss zstd) | | |
| Holdfast full | $(wall hf1) | $(cpu hf1) | $(mbs "$logical" "$(wall hf1)") | $(mbs "$alloc1" "$(wall hf1)") | $(rss hf1) | $(mb "$hf1_bytes") | $(mb "$hf1_disk") |
| Holdfast incremental (day 2) | $(wall hf2) | $(cpu hf2) | $(mbs "$logical" "$(wall hf2)") | $(mbs "$alloc2" "$(wall hf2)") | $(rss hf2) | $(mb "$hf2_bytes") | $(mb "$hf2_disk") |
| Holdfast encrypted full | $(wall hfe1) | $(cpu hfe1) | $(mbs "$logical" "$(wall hfe1)") | $(mbs "$alloc1" "$(wall hfe1)") | $(rss hfe1) | | |
| Holdfast encrypted incremental | $(wall hfe2) | $(cpu hfe2) | | | $(rss hfe2) | $(mb "$hfe2_bytes") | |
| borg full | $(wall borg1) | $(cpu borg1) | $(mbs "$logical" "$(wall borg1)") | $(mbs "$alloc1" "$(wall borg1)") | $(rss borg1) | $(mb "$borg1_bytes") | $(mb "$borg1_disk") |
| borg day 2 | $(wall borg2) | $(cpu borg2) | $(mbs "$logical" "$(wall borg2)") | $(mbs "$alloc2" "$(wall borg2)") | $(rss borg2) | $(mb "$borg2_bytes") | $(mb "$borg2_disk") |
| restic full | $(wall restic1) | $(cpu restic1) | $(mbs "$logical" "$(wall restic1)") | $(mbs "$alloc1" "$(wall restic1)") | $(rss restic1) | $(mb "$restic1_bytes") | $(mb "$restic1_disk") |
| restic day 2 | $(wall restic2) | $(cpu restic2) | $(mbs "$logical" "$(wall restic2)") | $(mbs "$alloc2" "$(wall restic2)") | $(rss restic2) | $(mb "$restic2_bytes") | $(mb "$restic2_disk") |
| Holdfast export of the day-2 point (sparse, fsync at the end) | $(wall hfx) | $(cpu hfx) | $(mbs "$logical" "$(wall hfx)") | $(mbs "$alloc2" "$(wall hfx)") | $(rss hfx) | | |
| Holdfast export, --no-sync | $(wall hfxn) | $(cpu hfxn) | $(mbs "$logical" "$(wall hfxn)") | $(mbs "$alloc2" "$(wall hfxn)") | $(rss hfxn) | | |
| Holdfast full of a 100 GiB sparse disk | $(wall hfbig) | $(cpu hfbig) | $(mbs $((100 * G)) "$(wall hfbig)") | $(mbs "$big_alloc" "$(wall hfbig)") | $(rss hfbig) | | |
| b3sum, 1 thread | $(wall b3) | $(cpu b3) | | $(mbs "$alloc1" "$(wall b3)") | | | |
| openssl sha256, 1 thread | $(wall sha) | $(cpu sha) | | $(mbs "$alloc1" "$(wall sha)") | | | |

Ratios (same run):
- full ingest throughput: Holdfast / borg = $(ratio "$(wall borg1)" "$(wall hf1)"), Holdfast / restic = $(ratio "$(wall restic1)" "$(wall hf1)") (targets >= 3 and >= 2)
- full ingest time / zstd-alone time = $(ratio "$(wall hf1)" "$(wall zstd)") (target <= 1.5)
- incremental time: borg / Holdfast = $(ratio "$(wall borg2)" "$(wall hf2)"), restic / Holdfast = $(ratio "$(wall restic2)" "$(wall hf2)")
- stored after day 2: Holdfast / restic = $(ratio "$hf2_bytes" "$restic2_bytes") (target <= 1); bytes added by day 2: Holdfast $(mb $((hf2_bytes - hf1_bytes))) MB, restic $(mb $((restic2_bytes - restic1_bytes))) MB, borg $(mb $((borg2_bytes - borg1_bytes))) MB
- export: $(mbs "$alloc2" "$(wall hfxn)") MB/s of allocated data without the final fsync, $(mbs "$alloc2" "$(wall hfx)") MB/s with it (target >= 1000); 100 GiB sparse ingest peak RSS $(rss hfbig) MiB (target < 256)
- hash: BLAKE3 / SHA-256 (openssl, SHA-NI) single-core throughput = $(ratio "$(wall sha)" "$(wall b3)")
REPORT

# ---- parameter sweep ---------------------------------------------------------------------------
if [ "${BENCH_SWEEP:-0}" = 1 ]; then
  echo
  echo "### Sweep: extent size, chunk size, zstd level (full + day-2 incremental)"
  echo
  echo "| extent KiB | avg chunk KiB | zstd | full s | inc s | stored after day 2 MB | added by day 2 MB | on disk MB | blobs |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for combo in "1024 64 3" "4096 32 3" "4096 64 3" "4096 128 3" "16384 64 3" "4096 64 1" "4096 64 6"; do
    set -- $combo
    S="$R/sweep-$1-$2-$3"
    "$HF" store --store "$S" init --extent-size-kib "$1" --chunk-avg-kib "$2" --zstd-level "$3" >/dev/null
    timed s1 "$HF" store --store "$S" ingest --vm b --disk "vda=$W/disk1.raw" --threads "$threads"
    b1=$(bytes "$S")
    timed s2 "$HF" store --store "$S" ingest --vm b --disk "vda=$W/disk2.raw" --threads "$threads" \
      --type incremental --parent latest --changed "vda=$W/changed.txt"
    b2=$(bytes "$S")
    echo "| $1 | $2 | $3 | $(wall s1) | $(wall s2) | $(mb "$b2") | $(mb $((b2 - b1))) | $(mb "$(diskuse "$S")") | $(find "$S/blobs" -type f | wc -l) |"
  done
fi
# Deleting many files slows the next file creations on ext4 for a while: clean up last.
rm -rf "$R"
