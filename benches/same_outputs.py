#!/usr/bin/env python3
"""Are two roots' nightly outputs the same? For refactors that must change no published byte.

Run the same binary-made demo world through two builds with `target_partitions = 1` (copy
pipelines/ and set it in nightly.toml), then compare:

    redflower synth --out /tmp/a && redflower nightly --root /tmp/a --date 2026-11-01 --pipelines P
    (the same with the other build into /tmp/b)
    python3 benches/same_outputs.py /tmp/a /tmp/b

Compares the published Parquet, scores, feature tables and dictionary byte for byte; the model
by its safetensors header (parsed: burn-store writes its metadata map in any order) and tensor
bytes; model.json and the manifest field by field (the root URL, the run id and the commit
time may differ). Exits 1 when anything else differs.
"""
import glob
import hashlib
import json
import os
import struct
import sys

BYTE_FOR_BYTE = [
    "published/limits/data/*/part-00000.parquet",
    "scores/dt=2026-11-01/part-00000.parquet",
    "features/dt=2026-11-01/part-00000.parquet",
    "features/dt=2026-11-01/users.parquet",
    "features/dt=2026-08-03/part-00000.parquet",
    "features/dictionary/*.parquet",
]
# fields that name where and when, not what
MAY_DIFFER = {"model.json": {"data"}, "manifest": {"published_at", "run_id", "files"}}


def sha(data):
    return hashlib.sha256(data).hexdigest()


def one(root, pattern):
    files = sorted(glob.glob(os.path.join(root, pattern)))
    if len(files) != 1:
        sys.exit(f"{root}: expected one {pattern}, found {files}")
    return files[0]


def weights(root):
    data = open(one(root, "models/*/weights.safetensors"), "rb").read()
    header = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + header]), sha(data[8 + header :])


def differing_fields(a, b):
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def main(a, b):
    ok = True

    def report(same, what):
        nonlocal ok
        ok &= same
        print("same      " if same else "DIFFERENT ", what)

    report(weights(a) == weights(b), "models/*/weights.safetensors (parsed header, tensor bytes)")
    for pattern in BYTE_FOR_BYTE:
        data = [open(one(root, pattern), "rb").read() for root in (a, b)]
        report(sha(data[0]) == sha(data[1]), pattern)
    for name, pattern in [("model.json", "models/*/model.json"),
                          ("manifest", "published/limits/_manifests/*.json")]:
        docs = [json.load(open(one(root, pattern))) for root in (a, b)]
        fields = differing_fields(*docs)
        report(set(fields) <= MAY_DIFFER[name], f"{name} (fields that differ: {fields})")
        if name == "manifest":
            checksums = [[f["sha256"] for f in doc["files"]] for doc in docs]
            report(checksums[0] == checksums[1], "manifest data-file checksums")
    print("ALL SAME" if ok else "NOT THE SAME")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
