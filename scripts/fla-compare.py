#!/usr/bin/env python3
"""fwp's chunked kernels against flash-linear-attention's chunk_delta_rule, side by side on one GPU.

Both run in this process on the same bf16 inputs: FLA 0.6.0 (installed from wheels with
`pip --no-index --target`) and fwp's op `torch.ops.fwp.chunked_rule`, loaded from the shared library
scripts/gpu-bundle builds (gpu-bundle/libfwp_torch.so). Shapes: B*T = 16k tokens, H = 16, d = d_k = d_v
in {64, 128}, T in {1k, 4k, 16k}; the delta rule without initial state, and FLA with scale = 1 (fwp's
recurrence has none). For each shape: forward, backward and forward + backward times (CUDA events,
median of the timed runs, after warm-up runs that also hold FLA's Triton autotuning), FLA / fwp, and
each one's relative RMS error of the output and every gradient against a float64 reference of the
same inputs (the chunkwise form in float64, autograd for the gradients). fwp's
target: FLA / fwp >= 1.5 for forward + backward, at equal or better accuracy.

Writes fla-compare.jsonl (one record per shape and implementation) and fla-compare.md to --out, and
fla-compare-profile.md: where each implementation's forward + backward spends its GPU time, kernel by
kernel (torch.profiler), at T = 4k for each d, so that a first run also says which stage to speed up.
All three are rewritten after each shape, so a run stopped at its time limit keeps what it measured.

FLA's first call at each d autotunes: Triton compiles and times every config of each of its nine
kernels, about 85 configs per d, one after another (about 60 s of compiling per d, measured for
sm_90 on one CPU core). Before the timed runs, --precompile-workers processes (default: most of the
CPU cores) compile those configs in parallel, each a share of every kernel's configs, into Triton's
on-disk cache; FLA's own autotuning then loads them instead of compiling, and still times every
config. Each record holds the seconds FLA's first call took at its d (fla_first_call_s).

  usage: python3 scripts/fla-compare.py --lib gpu-bundle/libfwp_torch.so --wheels gpu-bundle/wheels --out DIR
         [--precompile-workers N]   (0: no precompiling)
         python3 scripts/fla-compare.py --lib gpu-bundle/libfwp_torch.so --dry-run
--dry-run (what CI runs): no GPU needed; checks on the CPU, in float64 and on a small shape, that the
library loads and that fwp's op and this script's reference agree, outputs and gradients.
"""

import argparse
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F

CHUNK = 64
SHAPES = [(t, d) for d in (64, 128) for t in (1024, 4096, 16384)]
TOKENS, HEADS = 16384, 16


def reference(q, k, v, beta):
    """The delta rule in float64 by the chunkwise form: q, k [B, H, T, d_k], v [B, H, T, d_v],
    beta [B, H, T]; returns (out [B, H, T, d_v], final state [B, H, d_k, d_v])."""
    B, H, T, dk = q.shape
    dv = v.shape[-1]
    n = (T + CHUNK - 1) // CHUNK
    pad = n * CHUNK - T
    chunks = lambda x: F.pad(x, (0, 0, 0, pad)).reshape(B, H, n, CHUNK, x.shape[-1])
    qc, kc, vc = chunks(q), chunks(k), chunks(v)
    bc = F.pad(beta, (0, pad)).reshape(B, H, n, CHUNK, 1)
    a = ((bc * kc) @ kc.transpose(-1, -2)).tril(-1)  # A = tril(diag(beta) K K^T, -1)
    eye = torch.eye(CHUNK, dtype=q.dtype, device=q.device)
    wu = torch.linalg.solve_triangular(eye + a, torch.cat([bc * kc, bc * vc], -1), upper=False, unitriangular=True)
    w, u = wu[..., :dk], wu[..., dk:]
    qk = (qc @ kc.transpose(-1, -2)).tril(0)
    s = q.new_zeros(B, H, dk, dv)
    outs = []
    for i in range(n):
        u_new = u[:, :, i] - w[:, :, i] @ s  # U' = U - W S
        outs.append(qc[:, :, i] @ s + qk[:, :, i] @ u_new)  # O = Q S + tril(Q K^T) U'
        s = s + kc[:, :, i].transpose(-1, -2) @ u_new  # S' = S + K^T U'
    return torch.stack(outs, 2).reshape(B, H, n * CHUNK, dv)[:, :, :T], s


def inputs(b, h, t, d, device, seed):
    """q, k (unit rows), v, beta in (0, 1), dO: [B, H, T, d] float32 on `device`."""
    g = torch.Generator(device=device).manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, device=device)
    q = r(b, h, t, d) / d**0.5
    k = F.normalize(r(b, h, t, d), dim=-1)
    v = r(b, h, t, d)
    beta = torch.rand(b, h, t, generator=g, device=device)
    return q, k, v, beta, r(b, h, t, d)


def rel_rms(got, want):
    got, want = got.double(), want.double()
    return ((got - want).square().mean().sqrt() / want.square().mean().sqrt().clamp_min(1e-300)).item()


def grads(fn, x, grad_out):
    """(out, [dq, dk, dv, dbeta]) of fn on leaves made from x, for the cotangent grad_out."""
    leaves = [t.detach().requires_grad_() for t in x]
    out = fn(*leaves)
    return out.detach(), list(torch.autograd.grad(out, leaves, grad_out))


def fwp_op(q, k, v, beta):  # [B, H, T, d] layout
    # on CUDA the tensor-core operands of bf16 inputs; on the CPU (dry run, float64) exact products
    return torch.ops.fwp.chunked_rule(q, k, v, beta, None, CHUNK, "bf16" if q.is_cuda else "exact")[0]


def dry_run(lib):
    torch.ops.load_library(lib)
    q, k, v, beta, do = (t.double() for t in inputs(2, 3, 150, 24, "cpu", 0))
    want_out, want_g = grads(lambda *x: reference(*x)[0], (q, k, v, beta), do)
    got_out, got_g = grads(fwp_op, (q, k, v, beta), do)
    errors = {"out": rel_rms(got_out, want_out)}
    errors.update({n: rel_rms(g, w) for n, g, w in zip(("dq", "dk", "dv", "dbeta"), got_g, want_g)})
    print("dry run (CPU, float64): fwp's op against this script's reference:", errors)
    bad = {n: e for n, e in errors.items() if not e < 1e-10}
    if bad:
        sys.exit(f"fla-compare --dry-run: the op and the reference disagree: {bad}")
    # the operand names the op takes, as the GPU run passes them: three bf16 parts on float32
    # inputs keep float32 accuracy on the CPU twin; an unknown name is refused
    x32 = [t.float() for t in (q, k, v, beta)]
    out32 = torch.ops.fwp.chunked_rule(*x32, None, CHUNK, "bf16x3")[0]
    err32 = rel_rms(out32.double(), want_out)
    print(f"dry run (CPU, float32, operands 'bf16x3'): out relative RMS error {err32:.2e}")
    if not err32 < 1e-5:
        sys.exit(f"fla-compare --dry-run: operands 'bf16x3' on float32: error {err32:.2e}")
    try:
        torch.ops.fwp.chunked_rule(*x32, None, CHUNK, "bf17")
        sys.exit("fla-compare --dry-run: the op took operands 'bf17'")
    except RuntimeError as e:
        if "bf16x3" not in str(e):
            sys.exit(f"fla-compare --dry-run: unclear refusal of operands 'bf17': {e}")
    # FWP_CHUNKED_PASSES, which the GPU run sets for the "fwp-first" rows: 'first' is taken, an
    # unknown value refused
    os.environ["FWP_CHUNKED_PASSES"] = "first"
    try:
        first = torch.ops.fwp.chunked_rule(*x32, None, CHUNK, "bf16x3")[0]
        os.environ["FWP_CHUNKED_PASSES"] = "firts"
        torch.ops.fwp.chunked_rule(*x32, None, CHUNK, "bf16x3")
        sys.exit("fla-compare --dry-run: the op took FWP_CHUNKED_PASSES=firts")
    except RuntimeError as e:
        if "FWP_CHUNKED_PASSES" not in str(e):
            sys.exit(f"fla-compare --dry-run: unclear refusal of FWP_CHUNKED_PASSES=firts: {e}")
    finally:
        os.environ.pop("FWP_CHUNKED_PASSES", None)
    if not torch.equal(first, out32):
        sys.exit("fla-compare --dry-run: FWP_CHUNKED_PASSES=first changed the CPU twin's result")
    print("dry run: FWP_CHUNKED_PASSES=first taken, 'firts' refused")
    # the profile of the GPU run, here over CPU ops: it names fwp's op and accounts for its time
    # (KINETO_LOG_LEVEL: without it the profiler logs an error on a machine without a GPU)
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    rows = profile(fwp_op, x32, do.float(), 2)
    table = profile_table("fwp (CPU dry run)", rows)
    if not rows or not any("chunked" in r[0] for r in rows):
        sys.exit(f"fla-compare --dry-run: the profile does not show fwp's op:\n{table}")
    print(table)


def fla_delta_rule(site):
    """FLA's chunk_delta_rule from the folder its wheels were installed to, in fwp's terms: [B, T, H, d]
    inputs, no scale, no final state."""
    sys.path.insert(0, site)
    from fla.ops.delta_rule import chunk_delta_rule

    return lambda q, k, v, beta: chunk_delta_rule(q, k, v, beta, scale=1.0, output_final_state=False)[0]


def to_fla(x):
    """fwp's layout [B, H, T, ...] to FLA's [B, T, H, ...]."""
    return x.transpose(1, 2).contiguous()


def fla_inputs(t, d, seed=1):
    """The bf16 inputs and output gradient FLA gets at shape (T, d): [B, T, H, ...] on the GPU."""
    q, k, v, beta, do = inputs(max(1, TOKENS // t), HEADS, t, d, "cuda", seed)
    return [to_fla(x.bfloat16()) for x in (q, k, v, beta)], to_fla(do.bfloat16())


def first_shapes():
    """The first shape of each d in SHAPES: FLA autotunes once per d (its autotuning keys hold H, d and
    the chunk, not T), at the first call."""
    return [next(s for s in SHAPES if s[1] == d) for d in sorted({d for _, d in SHAPES})]


def precompile_worker(site, index, count):
    """Worker `index` of `count`: one FLA forward + backward at each d's first shape, with every
    autotuned kernel's configs cut to this worker's share (configs[index::count], or the first where
    that share is empty), so that the workers together compile each config once into Triton's on-disk
    cache. Each config runs once instead of being timed (a config that does not compile or fit still
    drops out, as in FLA's timing), and no autotuning result is written to disk: the main process
    times every config itself, alone on the GPU."""
    from triton.runtime import autotuner

    run = autotuner.Autotuner.run
    autotuner.Autotuner.do_bench = property(lambda self: lambda fn, quantiles=None, **kw: (fn(), [0.0] * 3)[1])

    def share(self, *args, **kwargs):
        self.cache_results = False  # a share's best config (or one picked here) must not reach the main process
        configs = self.configs
        self.configs = configs[index::count] or configs[:1]
        try:
            return run(self, *args, **kwargs)
        except Exception:
            # none of this share's configs ran (one alone is not timed, so one that does not fit the
            # GPU fails): all of them, as FLA itself does, so that the later kernels still get inputs
            self.cache.clear()
            self.configs = configs
            return run(self, *args, **kwargs)
        finally:
            self.configs = configs

    autotuner.Autotuner.run = share
    fla = fla_delta_rule(site)
    for t, d in first_shapes():
        x, grad_out = fla_inputs(t, d)
        grads(fla, x, grad_out)
    torch.cuda.synchronize()


def precompile(site, workers, limit_s=60):
    """Runs `workers` precompile_worker processes side by side (at most limit_s seconds, then stops
    them) and reports how they ended. Best effort: what a worker compiled before it failed or was
    stopped is in the cache, and FLA's own autotuning compiles whatever the cache lacks."""
    if workers < 1:
        return
    t0 = time.time()
    logs = [tempfile.TemporaryFile() for _ in range(workers)]  # files, not pipes: a worker never waits on us
    procs = [subprocess.Popen([sys.executable, __file__, "--precompile-worker", f"{i}/{workers}", "--fla-site", site],
                              stdout=log, stderr=subprocess.STDOUT)
             for i, log in enumerate(logs)]
    failed = []
    for i, (p, log) in enumerate(zip(procs, logs)):
        try:
            p.wait(timeout=max(0.1, limit_s - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            failed.append(f"worker {i}: stopped at the {limit_s:g}-s limit")
            continue
        if p.returncode != 0:
            log.seek(0)
            tail = log.read().decode(errors="replace").strip().splitlines()[-3:]
            failed.append(f"worker {i}: exit {p.returncode}: " + " | ".join(tail))
    print(f"FLA's Triton kernels precompiled by {workers} processes in {time.time() - t0:.1f} s"
          + ("" if not failed else f"; {len(failed)} did not finish (FLA's autotuning compiles their share):"),
          flush=True)
    for f in failed:
        print("  " + f[:400], flush=True)


def median_ms(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure(name, fn, x, grad_out, want, warmup, reps):
    """Times and errors of one implementation; fn takes and returns its own layout of x."""
    rec = {"impl": name}
    try:
        leaves = [t.detach().requires_grad_() for t in x]
        with torch.no_grad():
            rec["forward_ms"] = median_ms(lambda: fn(*x), warmup, reps)
        out = fn(*leaves)
        rec["backward_ms"] = median_ms(
            lambda: torch.autograd.grad(out, leaves, grad_out, retain_graph=True), warmup, reps)
        rec["train_ms"] = median_ms(
            lambda: torch.autograd.grad(fn(*leaves), leaves, grad_out), warmup, reps)
        got_out, got_g = grads(fn, x, grad_out)
        rec["errors"] = {"out": rel_rms(got_out, want[0])}
        rec["errors"].update({n: rel_rms(g, w) for n, g, w in zip(("dq", "dk", "dv", "dbeta"), got_g, want[1])})
    except Exception as e:  # a failure of one side is a result, not the end of the comparison
        rec["failed"] = f"{type(e).__name__}: {e}"[:500]
    return rec


PROFILE_T = 4096


def profile(fn, x, grad_out, reps):
    """Self time per kernel (CUDA) or per op (CPU) of forward + backward of fn on leaves made from x,
    per run over `reps` profiled runs after one untimed one: [(name, calls, us)], most time first."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    cuda = x[0].is_cuda
    leaves = [t.detach().requires_grad_() for t in x]
    step = lambda: torch.autograd.grad(fn(*leaves), leaves, grad_out)
    step()
    warnings.filterwarnings("ignore", message=".*Profiler clears events")  # one profiling cycle here
    with torch_profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(reps):
            step()
        if cuda:
            torch.cuda.synchronize()
    want = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    rows = [(e.key, e.count / reps, (e.device_time_total if cuda else e.self_cpu_time_total) / reps)
            for e in prof.key_averages() if e.device_type == want]
    return sorted((r for r in rows if r[2] > 0), key=lambda r: -r[2])


def kernel_name(name):
    """A CUDA kernel's name as the profiler gives it, readable: nvcc's mangled names of kernels in an
    anonymous namespace (`__nv_static_..._ZN...`) demangled by c++filt, without namespace and
    arguments (`wy_stage_kernel<1>`); where c++filt is missing, the identifier ending in `kernel`."""
    start = name.find("_ZN")
    if not name.startswith("__nv_static_") or start < 0:
        return name
    mangled, text = name[start:], None
    try:
        text = subprocess.run(["c++filt", mangled], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    if not text or text == mangled:
        found = re.findall(r"\d+([A-Za-z_]\w*?kernel)", mangled)
        return found[-1] if found else name
    text = re.sub(r"^void ", "", text.replace("(anonymous namespace)::", ""))
    depth = 0
    for i, ch in enumerate(text):
        depth += (ch == "<") - (ch == ">")
        if ch == "(" and depth == 0:
            return text[:i]
    return text


def profile_table(title, rows, top=15):
    """A markdown table of profile()'s rows: the `top` most expensive and the rest summed."""
    total = sum(r[2] for r in rows)
    lines = [f"### {title}: {total / 1000:.3f} ms per forward + backward", "",
             "| kernel (CPU: op) | calls | ms | share |", "|---|---|---|---|"]
    clip = lambda name: (name[:97] + "...") if len(name) > 100 else name
    rows = [(kernel_name(name), calls, us) for name, calls, us in rows]
    for name, calls, us in rows[:top]:
        lines.append(f"| `{clip(name)}` | {calls:g} | {us / 1000:.3f} | {us / max(total, 1e-9):.0%} |")
    rest = rows[top:]
    if rest:
        us = sum(r[2] for r in rest)
        lines.append(f"| ({len(rest)} more) | | {us / 1000:.3f} | {us / max(total, 1e-9):.0%} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", help="gpu-bundle/libfwp_torch.so (required)")
    ap.add_argument("--wheels", help="folder with the flash-linear-attention and fla-core wheels")
    ap.add_argument("--out", default="runs/fla-compare")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--precompile-workers", type=int, default=max(0, min(12, len(os.sched_getaffinity(0)) - 2)),
                    help="processes that compile FLA's Triton kernels before the timed runs (0: none)")
    ap.add_argument("--precompile-worker", help=argparse.SUPPRESS)  # I/N: run as worker I of N
    ap.add_argument("--fla-site", help=argparse.SUPPRESS)  # where the worker finds FLA
    args = ap.parse_args()
    if args.precompile_worker:
        index, count = (int(x) for x in args.precompile_worker.split("/"))
        precompile_worker(args.fla_site, index, count)
        return
    if not args.lib:
        ap.error("--lib is required")
    if args.dry_run:
        dry_run(args.lib)
        return
    if not torch.cuda.is_available():
        sys.exit("fla-compare: no CUDA GPU visible (use --dry-run on a CPU machine)")
    torch.ops.load_library(args.lib)
    target = tempfile.mkdtemp(prefix="fla-")
    wheels = sorted(glob.glob(os.path.join(args.wheels or "", "*.whl")))
    if not wheels:
        sys.exit(f"fla-compare: no wheels in {args.wheels}")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target", target,
                    *wheels], check=True)
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    precompile(target, args.precompile_workers)
    fla = fla_delta_rule(target)

    os.makedirs(args.out, exist_ok=True)
    records, profiles, first_call = [], [], {}
    for t, d in SHAPES:
        if d not in first_call:  # FLA's autotuning at this d, kept out of the timed runs
            x, grad_out = fla_inputs(t, d)
            t0 = time.time()
            try:
                grads(fla, x, grad_out)
                torch.cuda.synchronize()
                first_call[d] = round(time.time() - t0, 1)
                print(f"FLA's first forward + backward at d = {d} (its autotuning): {first_call[d]} s", flush=True)
            except Exception as e:  # reported with the shape's records below
                first_call[d] = None
                print(f"FLA's first call at d = {d} failed: {type(e).__name__}: {e}"[:500], flush=True)
            del x, grad_out
        b = max(1, TOKENS // t)
        q, k, v, beta, do = inputs(b, HEADS, t, d, "cuda", 1)
        bf = [x.bfloat16() for x in (q, k, v, beta)]  # the inputs both implementations see
        do = do.bfloat16()
        t0 = time.time()
        want = grads(lambda *x: reference(*x)[0], [x.double() for x in bf], do.double())
        ref_s = time.time() - t0
        fla_x = [to_fla(x) for x in bf]
        fla_do = to_fla(do)
        want_fla = (to_fla(want[0]), [to_fla(g) for g in want[1]])
        shape = {"B": b, "H": HEADS, "T": t, "d": d, "dtype": "bf16", "reference_s": round(ref_s, 1),
                 "fla_first_call_s": first_call[d]}
        # fwp-first: the chunked kernels with their first-version sequential passes (FWP_CHUNKED_PASSES)
        for name, fn, x, grad_out, w in (("fla", fla, fla_x, fla_do, want_fla),
                                         ("fwp", fwp_op, bf, do, want),
                                         ("fwp-first", fwp_op, bf, do, want)):
            if name == "fwp-first":
                os.environ["FWP_CHUNKED_PASSES"] = "first"
            try:
                rec = {**shape, **measure(name, fn, x, grad_out, w, args.warmup, args.reps)}
            finally:
                os.environ.pop("FWP_CHUNKED_PASSES", None)
            records.append(rec)
            print(json.dumps(rec), flush=True)
        if t == PROFILE_T:
            for name, fn, x, grad_out in (("FLA chunk_delta_rule", fla, fla_x, fla_do),
                                          ("fwp chunked_rule", fwp_op, bf, do)):
                try:
                    profiles.append(profile_table(f"{name}, T = {t}, d = {d}, B = {b}, H = {HEADS}, bf16",
                                                  profile(fn, x, grad_out, 3)))
                except Exception as e:  # the profile is extra: its failure is reported, not fatal
                    profiles.append(f"### {name}, T = {t}, d = {d}: profile failed: {type(e).__name__}: {e}\n")
                print(profiles[-1], flush=True)
        del q, k, v, beta, do, bf, want, fla_x, fla_do, want_fla
        torch.cuda.empty_cache()
        table = write_outputs(args.out, records, profiles)
    print(table)


def write_outputs(out, records, profiles):
    """(Re)writes fla-compare.jsonl, fla-compare.md (the shapes measured so far) and
    fla-compare-profile.md to `out`; returns the table."""
    with open(os.path.join(out, "fla-compare.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    lines = ["| T | d | FLA fwd / bwd / total ms | fwp fwd / bwd / total ms | FLA / fwp (total) "
             "| FLA max rel. RMS error | fwp max rel. RMS error | fwp, first-version passes: total ms "
             "| FLA's first call (autotuning), s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t, d in SHAPES:
        if not any(r["T"] == t and r["d"] == d and r["impl"] == "fwp-first" for r in records):
            continue  # not measured (yet)
        fr = next(r for r in records if r["T"] == t and r["d"] == d and r["impl"] == "fla")
        ow = next(r for r in records if r["T"] == t and r["d"] == d and r["impl"] == "fwp")
        first = next(r for r in records if r["T"] == t and r["d"] == d and r["impl"] == "fwp-first")
        cell = lambda r: (r["failed"] if "failed" in r else
                          f"{r['forward_ms']:.3f} / {r['backward_ms']:.3f} / {r['train_ms']:.3f}")
        err = lambda r: "–" if "failed" in r else f"{max(r['errors'].values()):.2e}"
        ratio = "–" if "failed" in fr or "failed" in ow else f"{fr['train_ms'] / ow['train_ms']:.2f}"
        first_ms = first["failed"] if "failed" in first else f"{first['train_ms']:.3f}"
        fc = fr["fla_first_call_s"]
        lines.append(f"| {t} | {d} | {cell(fr)} | {cell(ow)} | {ratio} | {err(fr)} | {err(ow)} | {first_ms} "
                     f"| {'–' if fc is None else fc} |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(out, "fla-compare.md"), "w") as f:
        f.write(table)
    with open(os.path.join(out, "fla-compare-profile.md"), "w") as f:
        f.write("\n".join(profiles))
    return table


if __name__ == "__main__":
    main()
