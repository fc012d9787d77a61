#!/usr/bin/env python3
"""The loops of the fast chunked CUDA kernels as the GPU runs them, read on the CPU: disassembles
the sm_90 (or --arch) code that build.rs compiled from kernels/chunked_passes.cu and prints, for each
kernel (or those matching --kernel), every loop (a backward branch) with its instruction count and
how many of those are tensor-core products (HMMA), shared and global loads and stores, barriers,
branches, and load groups: runs of loads that the loop's products and branches separate (1 where all
of the loop's loads can be in flight before its first product waits on one; a branch between two
n-tiles' loads makes each wait in turn).

A static count, not a measurement: a loop's body is counted once, both sides of a branch inside it
included, whatever its trip count. What it is good for: the instructions per HMMA of the inner
product loops, where a kernel issues an instruction per cycle per scheduler and one m16n8k16 HMMA
keeps a scheduler's tensor core busy for a few cycles, so that loads, conversions and index
arithmetic around the products decide the time (docs/performance.md, "GPU").

Usage (after a build): python3 scripts/sass-loops.py [--kernel state_forward] [--arch sm_90] [--object PATH]
[--innermost]. --object also reads the libraries scripts/gpu-kernel-ab builds (gpu-kernel-ab/NAME/libfwp_torch.so).
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys

COUNTED = ["HMMA", "LDS", "LDSM", "LDG", "LDGSTS", "STS", "STG", "BAR"]
LOADS = ("LDS", "LDSM", "LDG")


def cuobjdump():
    found = shutil.which("cuobjdump")
    if found:
        return found
    here = os.path.dirname(os.path.abspath(__file__))
    for pattern in ["../.venv/lib/python*/site-packages/nvidia/cu13/bin/cuobjdump",
                    "../.venv/lib/python*/site-packages/triton/backends/nvidia/bin/cuobjdump"]:
        for path in glob.glob(os.path.join(here, pattern)):
            return path
    sys.exit("sass-loops: no cuobjdump on PATH or in .venv (it comes with triton, which torch installs)")


def newest_object():
    here = os.path.dirname(os.path.abspath(__file__))
    objects = glob.glob(os.path.join(here, "../target/*/build/fwp-*/out/*chunked_passes.o"))
    if not objects:
        sys.exit("sass-loops: no chunked_passes.o under target/*/build: build first (make build, or cargo build --release)")
    return max(objects, key=os.path.getmtime)


def functions(sass):
    """(name, [(address, instruction text)]) for each function of cuobjdump's output."""
    name, body = None, []
    for line in sass.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            if name:
                yield name, body
            name, body = m.group(1), []
            continue
        m = re.match(r"\s+/\*([0-9a-f]+)\*/\s+(.*?)\s*;", line)
        if m and name:
            body.append((int(m.group(1), 16), m.group(2)))
    if name:
        yield name, body


def short(mangled):
    """The kernel's template name and arguments, from its mangled name."""
    m = re.search(r"\d([a-z_]+_kernel)I(.*?)EEv", mangled)
    if not m:
        return None
    args = re.findall(r"Li(\d+)E|Lb(\d)E|RowStageE(\d)", m.group(2))
    names = [a or ("true" if b == "1" else "false") if a or b else "stage" + c for a, b, c in args]
    return m.group(1) + "<" + ",".join(names) + ">"


def opcode(text):
    return re.sub(r"^@!?U?P\w+\s+", "", text).split(" ")[0].split(".")[0]


def load_groups(ops):
    """Runs of loads (shared or global) that products (HMMA) and branches separate: 1 where all of
    the loop's loads can be issued before its first product waits on one of them."""
    groups, in_run = 0, False
    for op in ops:
        if op in LOADS:
            groups += not in_run
            in_run = True
        elif op in ("HMMA", "BRA"):
            in_run = False
    return groups


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", default="", help="only kernels whose name contains this")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--object", default=None, help="the object file (default: the newest build's)")
    ap.add_argument("--min-hmma", type=int, default=1, help="only loops with at least this many HMMA")
    ap.add_argument("--innermost", action="store_true", help="only loops that hold no other loop")
    args = ap.parse_args()
    obj = args.object or newest_object()
    run = subprocess.run([cuobjdump(), "-sass", "-arch", args.arch, obj], capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"sass-loops: cuobjdump could not read {args.arch} code from {obj}: {run.stderr.strip()}")
    sass = run.stdout
    print(f"# {os.path.relpath(obj)} ({args.arch})")
    print("| kernel | loop | instructions | " + " | ".join(COUNTED) + " | BRA | load groups | per HMMA |")
    print("|---|---|---|" + "---|" * len(COUNTED) + "---|---|---|")
    for mangled, body in functions(sass):
        name = short(mangled)
        if not name or args.kernel not in name:
            continue
        index = {addr: i for i, (addr, _) in enumerate(body)}
        loops = []  # (first, last) instruction of each loop: a backward branch and its target
        for i, (addr, text) in enumerate(body):
            m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
            if m and int(m.group(1), 16) <= addr and int(m.group(1), 16) in index:
                loops.append((index[int(m.group(1), 16)], i))
        for start, i in loops:
            if args.innermost and any(start <= s and e < i for s, e in loops if (s, e) != (start, i)):
                continue
            ops = [opcode(t) for _, t in body[start:i + 1]]
            counts = {op: sum(1 for o in ops if o == op) for op in COUNTED}
            if counts["HMMA"] < args.min_hmma:
                continue
            per = f"{len(ops) / counts['HMMA']:.1f}" if counts["HMMA"] else "-"
            print(f"| {name} | {start}..{i} | {len(ops)} | " + " | ".join(str(counts[op]) for op in COUNTED)
                  + f" | {ops.count('BRA')} | {load_groups(ops)} | {per} |")


if __name__ == "__main__":
    main()
