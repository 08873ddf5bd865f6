#!/usr/bin/env python3
"""Builds the benchmark's realistic disk data reproducibly (seeded) and derives what the
benchmark feeds the tools: day-1 mixed files, day-2 edits, the changed ranges between two
images, the allocated data of an image, and data placed far apart in a huge sparse file."""

import os
import random
import sys

WORDS = ("error warn info debug request response user session cache disk backup volume node "
         "start stop retry timeout connection accepted closed GET POST /api/v1/items 200 404 500 "
         "worker thread queue commit rollback checkpoint snapshot latency ms bytes").split()


def log_text(rng, size):
    out, n, t = [], 0, 1_700_000_000
    while n < size:
        t += rng.randint(0, 3)
        line = "%d.%03d host%02d %s %s\n" % (t, rng.randint(0, 999), rng.randint(0, 40),
                                             rng.choice(("INFO", "WARN", "ERROR", "DEBUG")),
                                             " ".join(rng.choices(WORDS, k=rng.randint(4, 14))))
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def db_page(rng, page=8192):
    # Records of a few random integers and a text field, padded: compresses about 2:1.
    recs = []
    while sum(map(len, recs)) < page - 200:
        recs.append(rng.randbytes(24) + rng.choice(WORDS).encode().ljust(40, b"\0"))
    body = b"".join(recs)
    return body + bytes(page - len(body))


def mixed(root, seed):
    rng = random.Random(seed)
    d = os.path.join(root, "srv", "data")
    for sub in ("logs", "media", "db"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    for i in range(6):
        with open(os.path.join(d, "logs", "app%d.log" % i), "wb") as f:
            f.write(log_text(rng, 25 << 20))
    for i in range(15):
        with open(os.path.join(d, "media", "clip%02d.bin" % i), "wb") as f:
            f.write(rng.randbytes(10 << 20))
    with open(os.path.join(d, "db", "table.db"), "wb") as f:
        for _ in range((100 << 20) // 8192):
            f.write(db_page(rng))


def day2(root, seed):
    """About 3% of the allocated blocks change, the way a day of use changes a server."""
    rng = random.Random(seed)
    d = os.path.join(root, "srv", "data")
    with open(os.path.join(d, "logs", "app6.log"), "wb") as f:
        f.write(log_text(rng, 4 << 20))
    with open(os.path.join(d, "media", "clip15.bin"), "wb") as f:
        f.write(rng.randbytes(4 << 20))
    os.remove(os.path.join(d, "media", "clip03.bin"))
    with open(os.path.join(d, "db", "table.db"), "r+b") as f:
        pages = (100 << 20) // 8192
        for p in rng.sample(range(pages), 300):
            f.seek(p * 8192)
            f.write(db_page(rng))
    # Package-upgrade-like churn: some libraries and docs rewritten in place.
    candidates = []
    for top in ("usr/lib", "usr/share"):
        for dirpath, _, files in os.walk(os.path.join(root, top)):
            for name in files:
                p = os.path.join(dirpath, name)
                if os.path.isfile(p) and not os.path.islink(p) and 4096 <= os.path.getsize(p) <= (2 << 20):
                    candidates.append(p)
    candidates.sort()
    for p in rng.sample(candidates, min(40, len(candidates))):
        data = bytearray(open(p, "rb").read())
        for _ in range(4):
            i = rng.randrange(len(data))
            data[i] ^= 0x5A
        open(p, "wb").write(bytes(data))


def data_ranges(path):
    """(start, end) of the allocated data of a sparse file (SEEK_DATA/SEEK_HOLE)."""
    fd = os.open(path, os.O_RDONLY)
    size, pos, out = os.fstat(fd).st_size, 0, []
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end))
            pos = end
    finally:
        os.close(fd)
    return out


def changed(a, b, block=65536):
    """Ranges that differ between two images of the same size, at `block` granularity, merged:
    what change tracking would report."""
    ranges = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        spans = sorted(set(data_ranges(a)) | set(data_ranges(b)))
        for start, end in spans:
            s = start - start % block
            fa.seek(s)
            fb.seek(s)
            off = s
            while off < end:
                x, y = fa.read(block), fb.read(block)
                if x != y:
                    if ranges and ranges[-1][1] == off:
                        ranges[-1][1] = off + len(y)
                    else:
                        ranges.append([off, off + len(y)])
                off += block
    for s, e in ranges:
        print(s, e - s)


def apply_plan(src, changed_list, outdir):
    """Cuts the changed ranges of `src` into one file each, for replaying them as guest
    writes, and prints "FILE OFFSET LENGTH" lines."""
    os.makedirs(outdir, exist_ok=True)
    with open(src, "rb") as f, open(changed_list) as ranges:
        for i, line in enumerate(ranges):
            off, length = (int(x) for x in line.split())
            f.seek(off)
            path = os.path.join(outdir, "%05d.bin" % i)
            with open(path, "wb") as o:
                o.write(f.read(length))
            os.chmod(path, 0o644)
            print(path, off, length)


def alloc(src, out):
    with open(src, "rb") as f, open(out, "wb") as o:
        for s, e in data_ranges(src):
            f.seek(s)
            left = e - s
            while left:
                buf = f.read(min(left, 8 << 20))
                o.write(buf)
                left -= len(buf)


def place(src, dst, size, offsets):
    """A sparse file of `size` bytes holding the allocated data of `src` at each offset."""
    with open(dst, "wb") as o:
        o.truncate(size)
    with open(src, "rb") as f, open(dst, "r+b") as o:
        for base in offsets:
            for s, e in data_ranges(src):
                f.seek(s)
                o.seek(base + s)
                left = e - s
                while left:
                    buf = f.read(min(left, 8 << 20))
                    o.write(buf)
                    left -= len(buf)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "mixed":
        mixed(args[0], int(args[1]))
    elif cmd == "day2":
        day2(args[0], int(args[1]))
    elif cmd == "changed":
        changed(args[0], args[1], int(args[2]) if len(args) > 2 else 65536)
    elif cmd == "apply-plan":
        apply_plan(args[0], args[1], args[2])
    elif cmd == "alloc":
        alloc(args[0], args[1])
    elif cmd == "allocated-bytes":
        print(sum(e - s for s, e in data_ranges(args[0])))
    elif cmd == "place":
        place(args[0], args[1], int(args[2]), [int(x) for x in args[3:]])
    else:
        sys.exit("unknown command " + cmd)
