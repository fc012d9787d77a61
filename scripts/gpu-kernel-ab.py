#!/usr/bin/env python3
"""Times builds of fwp's chunked kernels against each other on one GPU (A/B), for a short device call.

Each NAME is a library scripts/gpu-kernel-ab built (gpu-kernel-ab/NAME/libfwp_torch.so), loaded in a process of
its own (a library, once loaded, stays). For each: the delta rule's forward + backward through
`torch.ops.fwp.chunked_rule` on bf16 inputs (operands 'bf16'), B*T = 16k tokens, H = 16, at each
(T, d) of --shapes: the median of --reps runs timed with CUDA events after warm-up runs; at T = 4k
the GPU time of each kernel (torch.profiler) and whether the output and every gradient are bit for
bit those of the first NAME. Prints a markdown table and writes gpu-kernel-ab.json to $OUT (or --out).

  usage: python3 scripts/gpu-kernel-ab.py base NAME... [--shapes 4096x64,4096x128] [--reps 20]
"""

import argparse
import json
import os
import re
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = ("wy_stage_kernel", "row_stage_kernel", "input_grads_stage_kernel", "state_forward_pass_kernel",
           "state_backward_pass_kernel")


def fla_compare():
    """scripts/fla-compare.py as a module, for its timing (median_ms)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("fla_compare", os.path.join(HERE, "fla-compare.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def inputs(t, d):
    """q, k (rows of unit norm), v, beta in (0, 1) and dO, bf16 [B, H, T, ...] on the GPU, seeded."""
    b, h = max(1, 16384 // t), 16
    g = torch.Generator(device="cuda").manual_seed(0)
    rand = lambda *s: torch.randn(*s, device="cuda", generator=g)
    q, k, v, do = rand(b, h, t, d), rand(b, h, t, d), rand(b, h, t, d), rand(b, h, t, d)
    k = torch.nn.functional.normalize(k, dim=-1)
    beta = torch.rand(b, h, t, device="cuda", generator=g)
    return [x.bfloat16() for x in (q, k, v, beta)], do.bfloat16()


def kernel_label(name):
    """The kernel's name and template arguments out of nvcc's mangled name."""
    for kernel in KERNELS:
        m = re.search(kernel + r"(I\w*?E)E", name)
        if m:
            args = re.findall(r"L(?:i|b|NS_\d+\w*?E)(\d+)E", m.group(1))
            return f"{kernel}<{', '.join(args)}>"
    return name[:60]


def child(lib, name, shapes, reps, scratch):
    torch.ops.load_library(lib)
    op = lambda q, k, v, beta: torch.ops.fwp.chunked_rule(q, k, v, beta, None, 64, "bf16")[0]
    median_ms = fla_compare().median_ms
    result = {"name": name, "train_ms": {}, "profile_ms": {}}
    for t, d in shapes:
        x, do = inputs(t, d)
        leaves = [a.detach().requires_grad_() for a in x]
        step = lambda: torch.autograd.grad(op(*leaves), leaves, do)
        result["train_ms"][f"T={t} d={d}"] = median_ms(step, 3, reps)
        if t == 4096:
            out = op(*leaves)
            grads = torch.autograd.grad(out, leaves, do)
            torch.save([out.detach().cpu()] + [g.cpu() for g in grads], os.path.join(scratch, f"{name}-{d}.pt"))
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    step()
                torch.cuda.synchronize()
            result["profile_ms"][f"d={d}"] = {
                kernel_label(e.key): round(e.device_time_total / 3 / 1000, 4)
                for e in prof.key_averages()
                if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time_total > 0}
    print("RESULT " + json.dumps(result), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="builds under gpu-kernel-ab/, the first the baseline")
    ap.add_argument("--shapes", default="4096x64,4096x128,1024x64,16384x64")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default=os.environ.get("OUT", "runs/gpu-kernel-ab"))
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    shapes = [tuple(int(n) for n in s.split("x")) for s in args.shapes.split(",")]
    if args.child:
        child(*args.child[:2], shapes, args.reps, args.child[2])
        return
    if not args.names:
        ap.error("name at least one build (gpu-kernel-ab/NAME/libfwp_torch.so)")
    if not torch.cuda.is_available():
        sys.exit("gpu-kernel-ab: no GPU visible")
    os.makedirs(args.out, exist_ok=True)
    scratch = os.path.join(args.out, "outputs")
    os.makedirs(scratch, exist_ok=True)
    results = []
    for name in args.names:
        lib = os.path.join(HERE, "..", "gpu-kernel-ab", name, "libfwp_torch.so")
        run = subprocess.run([sys.executable, __file__, "--child", lib, name, scratch, "--shapes", args.shapes,
                              "--reps", str(args.reps)], capture_output=True, text=True, timeout=600)
        lines = [l for l in run.stdout.splitlines() if l.startswith("RESULT ")]
        if not lines:
            print(f"{name}: FAILED\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}", flush=True)
            continue
        r = json.loads(lines[0][len("RESULT "):])
        r["same_bits_as_first"] = {}
        for d in sorted({d for t, d in shapes if t == 4096}):
            first = torch.load(os.path.join(scratch, f"{args.names[0]}-{d}.pt"))
            got = torch.load(os.path.join(scratch, f"{name}-{d}.pt"))
            r["same_bits_as_first"][f"d={d}"] = all(torch.equal(a, b) for a, b in zip(first, got))
        results.append(r)
        print(json.dumps(r, indent=1), flush=True)
    if not results:
        sys.exit("gpu-kernel-ab: no build ran")
    keys = list(results[0]["train_ms"])
    print("\nforward + backward ms (median), delta rule, bf16, B*T = 16k, H = 16\n")
    print("| build | " + " | ".join(keys) + " | same bits as the first |")
    print("|---" * (len(keys) + 2) + "|")
    for r in results:
        same = ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in r["same_bits_as_first"].items())
        print(f"| {r['name']} | " + " | ".join(f"{r['train_ms'].get(k, float('nan')):.3f}" for k in keys)
              + f" | {same} |")
    with open(os.path.join(args.out, "gpu-kernel-ab.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
