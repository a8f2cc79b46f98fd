#!/usr/bin/env python3
"""Small-file and random-write rates in a directory (a chordfs mount or the local disk).

Prints JSON: files/s for create, `ls -l`, read and remove of 1,000 files of 4 KiB, and
IOPS of 4 KiB random writes into a 64 MiB file (fsync'ed at the end, included).
"""
import json, os, random, subprocess, sys, time

root = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
os.makedirs(root, exist_ok=True)
data = os.urandom(4096)
out = {}

t = time.monotonic()
for i in range(n):
    with open(os.path.join(root, f"f{i:05}"), "wb") as f:
        f.write(data)
out["create"] = round(n / (time.monotonic() - t), 1)

t = time.monotonic()
subprocess.run(["ls", "-l", root], stdout=subprocess.DEVNULL, check=True)
out["ls_l"] = round(n / (time.monotonic() - t), 1)

t = time.monotonic()
for i in range(n):
    with open(os.path.join(root, f"f{i:05}"), "rb") as f:
        assert f.read() == data
out["read"] = round(n / (time.monotonic() - t), 1)

t = time.monotonic()
for i in range(n):
    os.unlink(os.path.join(root, f"f{i:05}"))
out["remove"] = round(n / (time.monotonic() - t), 1)

size = 64 << 20
path = os.path.join(root, "random.bin")
with open(path, "wb") as f:
    f.truncate(size)
rng = random.Random(1)
writes = 4096
fd = os.open(path, os.O_WRONLY)
t = time.monotonic()
for _ in range(writes):
    os.pwrite(fd, data, rng.randrange(0, size // 4096) * 4096)
os.fsync(fd)
os.close(fd)
out["iops"] = round(writes / (time.monotonic() - t), 1)
os.unlink(path)
os.rmdir(root)
print(json.dumps(out))
