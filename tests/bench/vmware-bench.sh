#!/usr/bin/env bash
# VMware benchmark (issue 16): Holdfast's VMware connector over the HTTPS datastore transport
# (byte-range GETs of the snapshot's flat disk through /folder, CBT for what to read) against
# `holdfast store ingest` of the same flat file, the limit of the appliance side. The disk is the
# store benchmark's realistic image, written into a vSphere simulator VM's flat disk through the
# test bed's /testbed/write (so CBT records it); day 2 replays its changed ranges the same way.
# The same backups also go over the VDDK transport, through the VixDiskLib stand-in tests/vddk-shim
# (installed as <dir>/lib64/libvixDiskLib.so.8, the platform's vddk_dir): it reads the bed's flat
# file locally (no NFC, no network), so those figures are the appliance side of the VDDK path.
# Each run: a fresh bed; full and incremental (and an incremental with nothing changed, the fixed
# cost) over HTTPS and over the VDDK shim, each against an ingest of the flat file in the same
# run; wall and CPU time, peak RSS, the bed's CPU time and what the rest of the machine used
# meanwhile (a timed run that other work on this shared machine disturbed is repeated). The
# simulator serves on loopback and shares the cores with Holdfast; a real ESXi serves from its
# own host. A VDDK backup that went over HTTPS instead stops the script. Prints a Markdown report.
#
#   tests/bench/vmware-bench.sh [RUNS]       (as root; RUNS defaults to 3)
#
# Work files go to $BENCH_DIR/vmware (default /var/tmp/hfbench/vmware), on a freshly made ext4.
set -euo pipefail
runs=${1:-3}
[[ $runs =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [RUNS]" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
W=${BENCH_DIR:-/var/tmp/hfbench}
V="$W/vmware"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/holdfast-target}"
tool="python3 $here/imagetool.py"
VM=DC0_H0_VM0
KEY=2000
BED_USER=holdfast@vsphere.local
BED_PASS='bench-Pass&<word>'
threads=$(nproc)

BENCH_IMAGES_ONLY=1 "$here/store-bench.sh"
missing=(); for p in time e2fsprogs; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; fi
(cd "$repo" && cargo build --release -p appliance --quiet)
HF="$CARGO_TARGET_DIR/release/holdfast"
# The VixDiskLib stand-in, built when missing or older than its sources or the bindings'.
SHIM="$CARGO_TARGET_DIR/release/libvddk_shim.so"
if [ ! -f "$SHIM" ] || [ -n "$(find "$repo/tests/vddk-shim" "$repo/connectors/vmware-vddk-sys" -type f -newer "$SHIM" | head -1)" ]; then
  (cd "$repo" && cargo build --release -p vddk-shim --quiet)
fi
BED=$(bash "$repo/tests/testbed/build-vcsim.sh" /var/tmp/holdfast-testbed/vcsim | tail -1)

bedpid=
stop_bed() {
  if [ -n "$bedpid" ]; then
    kill -TERM "$bedpid" 2>/dev/null || true   # SIGTERM: the bed removes its datastore directories
    wait "$bedpid" 2>/dev/null || true
    bedpid=
  fi
}
cleanup() {
  stop_bed
  umount "$V" 2>/dev/null || true
  rm -rf "$V" "$W/vmware-fs.img"
}
trap cleanup EXIT

umount "$V" 2>/dev/null || true
rm -rf "$V"; rm -f "$W/vmware-fs.img"
# The stores and the bed's datastore live on a freshly made ext4 (as in kvm-bench.sh): no run pays
# for files an earlier one deleted; the stores of every run are kept until the end.
truncate -s 24G "$W/vmware-fs.img"
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$W/vmware-fs.img"
mkdir -p "$V"
mount -o loop "$W/vmware-fs.img" "$V"
printf '%s\n' "$BED_PASS" > "$V/password"
# VDDK as VMware's tarball lays it out: the platform's vddk_dir, with lib64/libvixDiskLib.so.8.
VDDK="$V/vddk"
mkdir -p "$VDDK/lib64"
cp "$SHIM" "$VDDK/lib64/libvixDiskLib.so.8"

# The machine's busy CPU ticks so far (user, nice, system, irq, softirq, steal; all cores).
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
hz=$(getconf CLK_TCK)
# This machine is shared (builds and tests of other work run on it): before a timed run, wait
# (up to 10 minutes) for a second in which everything else used under 10% of one core.
quiet() {
  local b waited=0
  while [ $waited -lt 600 ]; do
    b=$(busy_ticks); sleep 1
    [ $(( ($(busy_ticks) - b) * 10 )) -lt "$hz" ] && return
    waited=$((waited + 1))
  done
  echo "the machine stayed busy for 10 minutes; timing anyway (see the others' CPU column)" >&2
}
# timed NAME CMD...: wall, CPU (user + system) and peak RSS of CMD in $V/t.NAME, and the busy CPU
# time of the whole machine over the run in $V/m.NAME (for the others' CPU column).
timed() {
  local name=$1 b; shift
  b=$(busy_ticks)
  /usr/bin/time -f "%e %U %S %M" -o "$V/t.$name" "$@" >"$V/out.$name" 2>"$V/err.$name" || { cat "$V/err.$name" >&2; exit 1; }
  awk -v a="$b" -v b="$(busy_ticks)" -v hz="$hz" 'BEGIN {printf "%.2f", (b - a) / hz}' > "$V/m.$name"
}
wall() { awk '{print $1}' "$V/t.$1"; }
cpu() { awk '{printf "%.1f", $2 + $3}' "$V/t.$1"; }
rss() { awk '{printf "%.0f", $4 / 1024}' "$V/t.$1"; }
mbs() { awk -v b="$1" -v s="$2" 'BEGIN {printf "%.0f", b / 1e6 / s}'; }
mb() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1e6}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
# The bed's CPU seconds so far (user + system), to see what it took from the two cores.
bed_cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$bedpid/stat"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", a - b}'; }
# CPU seconds the rest of the machine used during run NAME: all busy time less the run's own and
# (for a VMware run) the bed's; about 0 on a quiet machine.
others() {
  local bed=0
  [ -f "$V/bed.$1" ] && bed=$(cat "$V/bed.$1")
  awk -v m="$(cat "$V/m.$1")" -v bed="$bed" '{x = m - $2 - $3 - bed; printf "%.1f", x < 0 ? 0 : x}' "$V/t.$1"
}

# Every timed run starts alike (as in kvm-bench.sh): dirty data flushed, the page cache dropped,
# then the run's own input read once, so each side starts warm on what it reads (the flat file,
# which the bed serves from the page cache as ESXi would from its datastore) and cold on the rest.
settle() {
  sync
  quiet
  echo 3 > /proc/sys/vm/drop_caches
  find "$@" -type f -exec cat {} + > /dev/null
}

# A fresh bed with one VM whose disk is the image's size. Its datastore goes under $1.
start_bed() {
  mkdir -p "$1"
  TMPDIR="$1" "$BED" -listen 127.0.0.1:0 -user "$BED_USER" -password "$BED_PASS" -tls -vms 1 \
    -disks $(( $(stat -c %s "$W/disk1.raw") >> 20 )) >"$1/bed.json" 2>"$1/bed.err" &
  bedpid=$!
  for _ in $(seq 1 300); do
    if [ -f "$1/bed.json" ] && [ "$(wc -l < "$1/bed.json")" -ge 1 ]; then break; fi
    kill -0 "$bedpid" 2>/dev/null || { cat "$1/bed.err" >&2; exit 1; }
    sleep 0.1
  done
  python3 - "$1/bed.json" "$1" <<'PY'
import hashlib, json, shlex, ssl, sys
info = json.loads(open(sys.argv[1]).readline())
open(sys.argv[2] + "/ca.pem", "w").write(info["ca_pem"])
disk = info["vms"][0]["disks"][0]
host = info["url"].removeprefix("https://").removesuffix("/sdk")
h, port = host.rsplit(":", 1)
# The SHA-1 thumbprint of the certificate the bed serves: what real VDDK checks at Open.
der = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((h, int(port))))
open(sys.argv[2] + "/bed.vars", "w").write("".join("%s=%s\n" % (k, shlex.quote(v)) for k, v in [
    ("host", host), ("flat", disk["flat"]), ("datastore", info["datastore"]),
    ("datastore_dir", info["datastore_dir"]), ("thumbprint", hashlib.sha1(der).hexdigest())]))
PY
  # shellcheck disable=SC1091
  . "$1/bed.vars"
  ca="$1/ca.pem"
  platform=("$HF" platform --kind vmware --set "host=$host" --set "ca_file=$ca" --username "$BED_USER"
    --password-file "$V/password")
  # The same vCenter with the data through VDDK: the shim, configured through the environment of
  # the process that loads it, serves "[datastore] path" from the bed's datastore directory and,
  # as real VDDK does, insists on the user, password and certificate thumbprint. Its log (a line
  # per ConnectEx, Open and Close, none per read) shows that it served the disks.
  shimlog="$1/shim.log"
  : > "$shimlog"
  vplatform=(env "VDDK_SHIM_DATASTORES=$datastore=$datastore_dir" "VDDK_SHIM_USER=$BED_USER"
    "VDDK_SHIM_PASSWORD=$BED_PASS" "VDDK_SHIM_THUMBPRINT=$thumbprint" "VDDK_SHIM_LOG=$shimlog"
    "${platform[@]}" --set transport=vddk --set "vddk_dir=$VDDK")
}

# Guest writes through the bed, one keep-alive HTTPS connection, at most 64 MiB a request.
#   bedwrite day1 IMAGE           the image's data, skipping holes and all-zero 64 KiB blocks
#   bedwrite day2 IMAGE CHANGED   each "OFFSET LENGTH" range of CHANGED, as it is in IMAGE
# Prints "WRITES BYTES AREAS": the requests, the bytes written, and the extents CBT reports for
# them (writes that touch merged, as the bed does).
bedwrite() {
  python3 - "$here" "$host" "$ca" "$VM" "$KEY" "$@" <<'PY'
import http.client, ssl, sys
here, host, ca, vm, key, mode, image = sys.argv[1:8]
sys.path.insert(0, here)
import imagetool
ctx = ssl.create_default_context(cafile=ca)
h, port = host.rsplit(":", 1)
conn = http.client.HTTPSConnection(h, int(port), context=ctx)
MAX, BLOCK = 64 << 20, 64 << 10
writes, written, spans = 0, 0, []

def post(off, data):
    global writes, written
    conn.request("POST", "/testbed/write?vm=%s&disk=%s&offset=%d" % (vm, key, off), body=data,
                 headers={"Content-Type": "application/octet-stream"})
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        sys.exit("write at %d: HTTP %d %s" % (off, r.status, body.decode(errors="replace")))
    writes += 1
    written += len(data)
    if spans and spans[-1][1] >= off:
        spans[-1][1] = max(spans[-1][1], off + len(data))
    else:
        spans.append([off, off + len(data)])

with open(image, "rb") as f:
    if mode == "day1":
        for start, end in imagetool.data_ranges(image):
            f.seek(start)
            run_off, run, off = start, [], start
            while off < end:
                b = f.read(min(BLOCK, end - off))
                if b.count(0) == len(b):
                    if run:
                        post(run_off, b"".join(run))
                    run = []
                else:
                    if not run:
                        run_off = off
                    run.append(b)
                    if sum(map(len, run)) >= MAX:
                        post(run_off, b"".join(run))
                        run = []
                off += len(b)
            if run:
                post(run_off, b"".join(run))
    else:
        for line in open(sys.argv[8]):
            off, length = (int(x) for x in line.split())
            f.seek(off)
            while length:
                n = min(length, MAX)
                post(off, f.read(n))
                off, length = off + n, length - n
print(writes, written, len(spans))
PY
}

# The id of a store's newest point.
last_point() {
  "$HF" store --store "$1" ls --json | python3 -c '
import json, sys
p = json.load(sys.stdin)["points"][-1]
print(p["point_id"])'
}

# point_field OUT EXPR: EXPR of the point in a platform backup's --json answer (p: the point,
# d: its disk).
point_field() {
  python3 -c 'import json, sys; p = json.load(open(sys.argv[1]))["point"]; d = p["disks"][0]; print(eval(sys.argv[2]))' "$1" "$2"
}
# transport_of NAME: the data path the backup of run NAME reports ("https (datastore /folder)",
# "vddk nbdssl"; with "; VDDK not used: why" when it fell back to HTTPS).
transport_of() {
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["transport"])' "$V/out.$1"
}
check_https() {
  local t; t=$(transport_of "$1")
  [ "$t" = "https (datastore /folder)" ] || { echo "$1 did not go over HTTPS: transport \"$t\"" >&2; exit 1; }
}
shim_opens() { grep -c '^Open ' "$shimlog" || true; }
# vddk_backup NAME TYPE: a timed backup of TYPE over VDDK into $R/vddk; stops the script unless its
# disk went through VDDK (the shim), and keeps the mode VDDK picked in $V/mode.NAME.
vddk_backup() {
  local name=$1 type=$2 opens t
  opens=$(shim_opens)
  measure "$name" "$R/vddk" "${vplatform[@]}" backup --vm $VM --type "$type" --store "$R/vddk" --threads "$threads" --json
  t=$(transport_of "$name")
  if ! [[ $t =~ ^vddk\ (nbd|nbdssl|hotadd|san)$ ]]; then
    echo "$name did not go through VDDK (fell back to HTTPS?): transport \"$t\"" >&2
    cat "$V/err.$name" >&2
    exit 1
  fi
  [ "$(shim_opens)" -gt "$opens" ] || { echo "$name: the VDDK shim logged no Open of the disk ($shimlog)" >&2; exit 1; }
  echo "${t#vddk }" > "$V/mode.$name"
}


# measure NAME STORE CMD...: settle, then a timed run of CMD, which writes into STORE; for a VMware
# run (NAME vm.* over HTTPS, vddk.* over the VDDK shim) also the bed's CPU time. The machine is
# shared: when the rest of it used more than 0.3 CPU-s + a quarter of the wall time meanwhile (on
# a quiet machine it is the kernel writing the store out, 0.1-0.4 s), the run is repeated, up to
# 5 tries, from a copy of STORE as it was before (the bed's CBT answers the same: a base point's
# change id stays valid). Disturbed stores are moved aside, not deleted (deleting many files
# slows the next file creations on ext4). Files to read once before the run: the array warm.
is_vm() { case $1 in vm.* | vddk.*) return 0 ;; *) return 1 ;; esac; }
measure() {
  local name=$1 store=$2 try b0; shift 2
  cp -a "$store" "$store.pre"
  for try in 1 2 3 4 5; do
    settle "${warm[@]}"
    is_vm "$name" && b0=$(bed_cpu)
    timed "$name" "$@"
    is_vm "$name" && sub "$(bed_cpu)" "$b0" > "$V/bed.$name"
    if awk -v o="$(others "$name")" -v w="$(wall "$name")" 'BEGIN {exit !(o <= 0.3 + w / 4)}'; then break; fi
    echo "$name: the rest of the machine used $(others "$name") CPU-s during the run (try $try)" >&2
    [ "$try" = 5 ] && break
    mv "$store" "$store.busy$try"
    cp -a "$store.pre" "$store"
  done
  echo "$try" > "$V/tries.$name"
  mv "$store.pre" "$store.before-$name"
}

for r in $(seq 1 "$runs"); do
  R="$V/run$r"
  mkdir -p "$R"
  echo "run $r of $runs" >&2
  # 1. A fresh bed; day 1 written by the "guest" (untimed).
  start_bed "$R/bed"
  day1=$(bedwrite day1 "$W/disk1.raw")
  read -r d1_writes d1_bytes d1_areas <<< "$day1"
  alloc=$($tool allocated-bytes "$flat")
  "$HF" store --store "$R/vm" init >/dev/null
  "$HF" store --store "$R/vddk" init >/dev/null
  "$HF" store --store "$R/ing" init >/dev/null

  # 2. Holdfast's VMware full over HTTPS, then over VDDK (the shim) into a store of its own.
  warm=("$flat")
  measure "vm.full.$r" "$R/vm" "${platform[@]}" backup --vm $VM --type full --store "$R/vm" --threads "$threads" --json
  [ "$(point_field "$V/out.vm.full.$r" 'd["backup_type"]')" = full ] || { echo "the VMware full is not a full" >&2; exit 1; }
  check_https "vm.full.$r"
  disk=$(point_field "$V/out.vm.full.$r" 'd["key"]')
  point_field "$V/out.vm.full.$r" 'p["stats"]["read_bytes"]' > "$V/read.vm.full.$r"
  vddk_backup "vddk.full.$r" full
  [ "$(point_field "$V/out.vddk.full.$r" 'd["backup_type"]')" = full ] || { echo "the VDDK full is not a full" >&2; exit 1; }
  point_field "$V/out.vddk.full.$r" 'p["stats"]["read_bytes"]' > "$V/read.vddk.full.$r"

  # 3. `holdfast store ingest` of the same flat file, as a full into another store.
  measure "ing.full.$r" "$R/ing" "$HF" store --store "$R/ing" ingest --vm bench --disk "$disk=$flat" --threads "$threads"

  # 4. Day 2: each changed range of disk2.raw written through the bed (untimed).
  day2=$(bedwrite day2 "$W/disk2.raw" "$W/changed.txt")
  read -r d2_writes d2_bytes d2_areas <<< "$day2"

  # 5. Holdfast's VMware incremental over HTTPS and over VDDK (each since its own full), then the
  # ingest incremental of the flat file.
  measure "vm.inc.$r" "$R/vm" "${platform[@]}" backup --vm $VM --type incremental --store "$R/vm" --threads "$threads" --json
  kind=$(point_field "$V/out.vm.inc.$r" 'd["backup_type"] + " " + str(d.get("full_reason"))')
  [ "$kind" = "incremental None" ] || { echo "the VMware incremental is not one: $kind" >&2; exit 1; }
  check_https "vm.inc.$r"
  point_field "$V/out.vm.inc.$r" 'p["stats"]["read_bytes"]' > "$V/read.vm.inc.$r"
  vddk_backup "vddk.inc.$r" incremental
  kind=$(point_field "$V/out.vddk.inc.$r" 'd["backup_type"] + " " + str(d.get("full_reason"))')
  [ "$kind" = "incremental None" ] || { echo "the VDDK incremental is not one: $kind" >&2; exit 1; }
  point_field "$V/out.vddk.inc.$r" 'p["stats"]["read_bytes"]' > "$V/read.vddk.inc.$r"
  warm=("$flat" "$W/changed.txt")
  measure "ing.inc.$r" "$R/ing" "$HF" store --store "$R/ing" ingest --vm bench --disk "$disk=$flat" --threads "$threads" \
    --type incremental --parent latest --changed "$disk=$W/changed.txt"

  # 6. Correctness: the VMware incremental points' disk (HTTPS and VDDK) is the flat file, which is
  # disk2.raw.
  if [ "$r" = 1 ]; then
    point=$(point_field "$V/out.vm.inc.$r" 'p["point_id"]')
    "$HF" store --store "$R/vm" export "$point" --disk "$disk" --out "$R/export.raw" >/dev/null
    cmp "$R/export.raw" "$flat" || { echo "the VMware incremental point differs from the flat disk" >&2; exit 1; }
    cmp "$flat" "$W/disk2.raw" || { echo "the flat disk differs from disk2.raw" >&2; exit 1; }
    rm -f "$R/export.raw"
    point=$(point_field "$V/out.vddk.inc.$r" 'p["point_id"]')
    "$HF" store --store "$R/vddk" export "$point" --disk "$disk" --out "$R/export.raw" >/dev/null
    cmp "$R/export.raw" "$flat" || { echo "the VDDK incremental point differs from the flat disk" >&2; exit 1; }
    rm -f "$R/export.raw"
    ing_point=$(last_point "$R/ing")
    "$HF" store --store "$R/ing" export "$ing_point" --disk "$disk" --out "$R/export.raw" >/dev/null
    cmp "$R/export.raw" "$flat" || { echo "the ingest incremental point differs from the flat disk" >&2; exit 1; }
    rm -f "$R/export.raw"
  fi

  # 7. Nothing changed since: what each side costs beyond the data (for VMware: log in, snapshot,
  # CBT query, snapshot removal; for both: the store's open, parent map and commit).
  : > "$R/none.txt"
  warm=("$flat")
  measure "vm.none.$r" "$R/vm" "${platform[@]}" backup --vm $VM --type incremental --store "$R/vm" --threads "$threads" --json
  [ "$(point_field "$V/out.vm.none.$r" 'p["stats"]["read_bytes"]')" = 0 ] || { echo "the no-change incremental read data" >&2; exit 1; }
  check_https "vm.none.$r"
  vddk_backup "vddk.none.$r" incremental
  kind=$(point_field "$V/out.vddk.none.$r" 'd["backup_type"] + " " + str(d.get("full_reason")) + " " + str(p["stats"]["read_bytes"])')
  [ "$kind" = "incremental None 0" ] || { echo "the VDDK no-change incremental is not an incremental reading nothing: $kind" >&2; exit 1; }
  warm=("$flat" "$R/none.txt")
  measure "ing.none.$r" "$R/ing" "$HF" store --store "$R/ing" ingest --vm bench --disk "$disk=$flat" --threads "$threads" \
    --type incremental --parent latest --changed "$disk=$R/none.txt"
  echo "$alloc $d1_writes $d1_bytes $d1_areas $d2_writes $d2_bytes $d2_areas" > "$V/sizes.$r"
  stop_bed
done

read -r alloc d1_writes d1_bytes d1_areas d2_writes d2_bytes d2_areas < "$V/sizes.1"
changed=$(awk '{s += $2} END {print s + 0}' "$W/changed.txt")
es=$((4 << 20))
# The VDDK shim's columns of run NAME (a vddk.* run): wall, CPU, peak RSS, MB/s of BYTES, bed CPU,
# others' CPU, reads (4 MiB extents, one VixDiskLib_Read each), mode.
vddk_cols() {
  printf '%s | %s | %s | %s | %s | %s | %s | %s' "$(wall "$1")" "$(cpu "$1")" "$(rss "$1")" "$(mbs "$2" "$(wall "$1")")" \
    "$(cat "$V/bed.$1")" "$(others "$1")" "$(( $(cat "$V/read.$1") / es ))" "$(cat "$V/mode.$1")"
}
cat <<REPORT
### Result ($(date -u +%Y-%m-%d), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -r), $runs runs, govmomi $(dpkg-query -W -f '${Version}' golang-github-vmware-govmomi-dev 2>/dev/null || echo '?') simulator)

Day 1: $(mb "$d1_bytes") MB written through the bed in $d1_writes requests (the image's data without its all-zero
64 KiB blocks), $(mb "$alloc") MB allocated in the flat file, $d1_areas CBT areas. Day 2: $(wc -l < "$W/changed.txt") changed ranges,
$(mb "$changed") MB, in $d2_writes requests, $d2_areas CBT areas. MB/s: allocated bytes (full) or changed bytes (incremental) per
wall second. "bed CPU s": the simulator's CPU time during the VMware run; "others' CPU s": what the rest of the
machine used meanwhile (all busy CPU time less Holdfast's and the bed's). Holdfast $threads threads on every side.
HTTPS: the datastore transport (byte-range GETs through /folder). VDDK shim: the VDDK transport through
tests/vddk-shim, a stand-in for libvixDiskLib that reads the bed's flat file from the local file system
(no NFC, no network, no TLS): its columns measure the appliance side of the VDDK path (loading and calling
the library, sector reads through the FFI, the store), with the same SOAP work as HTTPS (log in, snapshot,
CBT, snapshot removal), not what a real VDDK's NBD/NBDSSL transfer from an ESXi costs. Both ratios are
against the same ingest of the same run.

Full:

| run | HTTPS wall s | CPU s | peak RSS MiB | MB/s | bed CPU s | others' CPU s | GETs | ingest wall s | CPU s | peak RSS MiB | MB/s | others' CPU s | HTTPS / ingest (target <= 1.3) | VDDK shim wall s | CPU s | peak RSS MiB | MB/s | bed CPU s | others' CPU s | reads | mode | VDDK shim / ingest |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
REPORT
for r in $(seq 1 "$runs"); do
  echo "| $r | $(wall vm.full.$r) | $(cpu vm.full.$r) | $(rss vm.full.$r) | $(mbs "$alloc" "$(wall vm.full.$r)") | $(cat "$V/bed.vm.full.$r") | $(others vm.full.$r) | $(( $(cat "$V/read.vm.full.$r") / es )) | $(wall ing.full.$r) | $(cpu ing.full.$r) | $(rss ing.full.$r) | $(mbs "$alloc" "$(wall ing.full.$r)") | $(others ing.full.$r) | $(ratio "$(wall vm.full.$r)" "$(wall ing.full.$r)") | $(vddk_cols vddk.full.$r "$alloc") | $(ratio "$(wall vddk.full.$r)" "$(wall ing.full.$r)") |"
done
cat <<REPORT

Incremental:

| run | HTTPS wall s | CPU s | peak RSS MiB | MB/s | bed CPU s | others' CPU s | GETs | ingest wall s | CPU s | peak RSS MiB | MB/s | others' CPU s | HTTPS / ingest (target <= 1.5) | VDDK shim wall s | CPU s | peak RSS MiB | MB/s | bed CPU s | others' CPU s | reads | mode | VDDK shim / ingest |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
REPORT
for r in $(seq 1 "$runs"); do
  echo "| $r | $(wall vm.inc.$r) | $(cpu vm.inc.$r) | $(rss vm.inc.$r) | $(mbs "$changed" "$(wall vm.inc.$r)") | $(cat "$V/bed.vm.inc.$r") | $(others vm.inc.$r) | $(( $(cat "$V/read.vm.inc.$r") / es )) | $(wall ing.inc.$r) | $(cpu ing.inc.$r) | $(rss ing.inc.$r) | $(mbs "$changed" "$(wall ing.inc.$r)") | $(others ing.inc.$r) | $(ratio "$(wall vm.inc.$r)" "$(wall ing.inc.$r)") | $(vddk_cols vddk.inc.$r "$changed") | $(ratio "$(wall vddk.inc.$r)" "$(wall ing.inc.$r)") |"
done
cat <<REPORT

Incremental with nothing changed since the last (the fixed cost of a backup):

| run | HTTPS wall s | CPU s | others' CPU s | ingest wall s | CPU s | others' CPU s | VDDK shim wall s | CPU s | peak RSS MiB | others' CPU s | mode |
|---|---|---|---|---|---|---|---|---|---|---|---|
REPORT
for r in $(seq 1 "$runs"); do
  echo "| $r | $(wall vm.none.$r) | $(cpu vm.none.$r) | $(others vm.none.$r) | $(wall ing.none.$r) | $(cpu ing.none.$r) | $(others ing.none.$r) | $(wall vddk.none.$r) | $(cpu vddk.none.$r) | $(rss vddk.none.$r) | $(others vddk.none.$r) | $(cat "$V/mode.vddk.none.$r") |"
done
echo
echo "GETs: 4 MiB extents read over HTTPS, one byte-range GET each (the point's read bytes / 4 MiB)."
echo "Reads: 4 MiB extents read through the VDDK shim, one VixDiskLib_Read each (the point's read bytes / 4 MiB)."
echo "Mode: the transport mode VDDK reported for the disk (the backup's transport, \"vddk MODE\"); every VDDK run was checked to have gone through VDDK, not over HTTPS, and the shim to have logged its Open of the disk."
echo "CBT queries: QueryChangedDiskAreas pages of at most 4 areas (the bed's limit): $(( (d1_areas + 3) / 4 )) for the full's \"*\", $(( (d2_areas + 3) / 4 )) for the incremental (each transport)."
echo "Peak RSS of every VMware run over HTTPS: $(for r in $(seq 1 "$runs"); do printf '%s %s ' "$(rss vm.full.$r)" "$(rss vm.inc.$r)"; done)MiB; over the VDDK shim: $(for r in $(seq 1 "$runs"); do printf '%s %s ' "$(rss vddk.full.$r)" "$(rss vddk.inc.$r)"; done)MiB (target < 256)."
repeated=$(cd "$V" && for f in tries.*; do if [ "$(cat "$f")" -gt 1 ]; then echo "${f#tries.} ($(cat "$f") tries)"; fi; done | paste -sd, - | sed 's/,/, /g')
echo "Runs repeated because the rest of the machine was busy: ${repeated:-none}; every figure above is from the last try (vm.*: HTTPS, vddk.*: VDDK shim, ing.*: ingest)."
echo "Checked in run 1: the VMware incremental points' exports (HTTPS and VDDK shim) and the ingest incremental's equal the flat disk, which equals disk2.raw (cmp)."
