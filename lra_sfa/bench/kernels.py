"""Benchmark the SFA Triton kernels against cuDNN and FlashAttention-2 SDPA.

    python -m lra_sfa.bench.kernels --mode sweep   --out results/kernels
    python -m lra_sfa.bench.kernels --mode explore --out $OUT
    python -m lra_sfa.bench.kernels --mode check   --out $OUT   # GPU correctness only
    python -m lra_sfa.bench.kernels --mode merge   --src DIR    # a device run's CSVs into results/kernels

``sweep`` writes ``sfa_vs_sdpa.csv`` (one row per shape, op and baseline;
each measured row replaces the file's row of the same cell, ``KERNEL_KEY``,
and the file is rewritten after every row, so a timeout or a partial re-run
keeps everything else, including the ``impl=sfa_wide`` rows of
``lra_sfa.bench.wide``),
``sfa_checks.csv`` (kernel and plain-PyTorch errors and the DESIGN.md
verdict per row) and the plot ``sfa_vs_sdpa.png``. ``explore`` times the
forward designs and tile configurations at one shape (``sfa_explore.csv``).

Timing: one warm-up call (compilation, autotuning), then CUDA-event medians
over enough calls to fill ``--rep-ms``, issued back to back with one host sync
at the end (``timing.time_ms(queued=True)``). Dense baselines are timed on random
q, k and on the top-k-sparsified q, k; the faster (less favourable) is used.
SFA times include the fused top-k of q and k. Errors: sampled query rows
recomputed in float64 (``lra_sfa.kernels.sfa_check``).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import time
from functools import partial
from pathlib import Path

import torch
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

from lra_sfa.bench import timing
from lra_sfa.kernels import sfa_check
from lra_sfa.kernels.flash_sfa import flash_sfa, gluon_bwd_eligible, gluon_config, gluon_eligible
from lra_sfa.kernels.sfa_decode import cache_bytes_per_token, cache_key_range, launch_defaults, pack_k_cache, sfa_decode
from lra_sfa.kernels.topk_pack import topk_pack

COLUMNS = ["impl", "op", "batch", "heads", "seq_len", "head_dim", "topk", "dtype", "ms", "baseline",
           "baseline_ms", "speedup", "max_rel_err", "peak_mem_mb", "device", "date"]
# sfa_vs_sdpa.csv also holds the wide-code rows (impl=sfa_wide, from lra_sfa.bench.wide); these columns
# say which variant a wide row is, and stay empty on the sfa_triton rows.
WIDE_COLUMNS = ["mode", "cap", "D", "mean_candidates", "dropped_frac"]
KERNEL_CSV_COLUMNS = COLUMNS + WIDE_COLUMNS
# one cell of sfa_vs_sdpa.csv / sfa_checks.csv: a re-measured cell replaces its row (batch x heads follow L)
KERNEL_KEY = ["impl", "op", "seq_len", "head_dim", "topk", "dtype", "baseline", "mode", "cap", "D"]
SFA_IMPL = "sfa_triton"
# Kernel timings queue the calls back to back (timing.time_ms(queued=True), as triton.testing.do_bench):
# the GPU time of each call, with the host's launch work overlapped as in a training or decoding loop.
# Every SFA and SDPA time in this module is taken this way (the rows of 2026-11-28 and the first decode
# grid of 2026-11-29 synced after each call, which also counted the exposed launch work; NOTES.md has both).
time_ms = partial(timing.time_ms, queued=True)
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "fa2": SDPBackend.FLASH_ATTENTION}
CHECK_ROWS, CHECK_HEADS = 128, 2
DEVICE = "cuda"
EXPLORE_CHECKS = [(1, 64, 8, False, torch.bfloat16), (100, 128, 8, True, torch.bfloat16),
                  (1000, 128, 16, True, torch.bfloat16), (4097, 64, 8, False, torch.bfloat16),
                  (777, 32, 4, True, torch.float16), (300, 128, 8, True, torch.float32),
                  (2048, 128, 128, False, torch.bfloat16), (4096, 128, 8, False, torch.bfloat16),
                  (1024, 128, 8, False, torch.bfloat16, 40.0), (1984, 128, 16, False, torch.bfloat16),
                  (2048, 64, 16, False, torch.bfloat16)]
# (L, D, topk, padding, dtype[, input scale]) full reference. On an H200, 2048, 4096 and 1024 at D=128 (the last
# with a bound so loose that every block takes the online fallback) run the Gluon forward's two-warpgroup launch and
# the Gluon backward, 1984 (a multiple of 64, not of 128) the one-warpgroup forward and the Triton backward
# (flash_sfa.gluon_config), 2048 at D=64 the Triton forward and the Gluon backward
EXPLORE_SECTIONS = ("checks", "topk", "fwd", "fwd_stages", "gluon", "variants", "bwd", "bwd_stages", "gluon_bwd",
                    "full", "decode")


def _cell(value) -> str:
    return "" if value is None else str(value)


class RowWriter:
    """A CSV of dict rows, rewritten atomically (a temporary file, then a rename) after every row.

    With ``key`` (column names) the rows already in the file are kept and a new row replaces the one
    with the same key, so a partial re-run (one op, one head dim, one impl) updates its own cells and
    loses none of the others; each row keeps its own ``date``. Without ``key`` the file starts empty.
    """

    def __init__(self, path: Path, columns: list[str], key: list[str] | None = None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.columns, self.key = path, columns, key
        self.rows: list[dict[str, str]] = []
        if key and path.exists():
            with path.open(newline="") as handle:
                self.rows = [{c: row.get(c) or "" for c in columns} for row in csv.DictReader(handle)]
        self._flush()

    def _key_of(self, row: dict) -> tuple[str, ...]:
        return tuple(_cell(row.get(c)) for c in self.key or ())  # a key column the file lacks reads as ""

    def write(self, row: dict) -> None:
        cells = {c: _cell(row.get(c)) for c in self.columns}
        key = self._key_of(cells)
        same = [i for i, old in enumerate(self.rows) if self.key and self._key_of(old) == key]
        if same:
            self.rows[same[0]] = cells
            self.rows = [r for i, r in enumerate(self.rows) if i not in same[1:]]
        else:
            self.rows.append(cells)
        self._flush()

    def _flush(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)


def shape_for(length: int, tokens: int, max_heads: int = 16) -> tuple[int, int]:
    """(batch, heads) with batch * heads * length = tokens (at least one head)."""
    heads = max(1, min(max_heads, tokens // length))
    return max(1, tokens // (length * heads)), heads


def random_qkv(batch: int, heads: int, length: int, dim: int, dtype: torch.dtype, seed: int):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    return [torch.randn(batch, heads, length, dim, device=DEVICE, dtype=dtype, generator=gen) for _ in range(3)]


def sdpa_call(backend: str, q, k, v, grad_out=None):
    """A closure running SDPA on one backend; with grad_out, forward and backward."""
    def run():
        with sdpa_kernel([BACKENDS[backend]]):
            if grad_out is None:
                with torch.no_grad():
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v)
            torch.nn.functional.scaled_dot_product_attention(q, k, v).backward(grad_out)
    return run


def sfa_call(q, k, v, topk: int, grad_out=None):
    def run():
        if grad_out is None:
            with torch.no_grad():
                return flash_sfa(q, k, v, topk, topk)
        flash_sfa(q, k, v, topk, topk).backward(grad_out)
    return run


def _torch_topk_codes(x: torch.Tensor, topk: int, scatter: bool = True) -> torch.Tensor:
    """torch.topk on |x| (and, with ``scatter``, a 0/1 code tensor built from it): the torch baseline."""
    indices = torch.topk(x.abs(), topk, dim=-1).indices
    return torch.zeros_like(x).scatter_(-1, indices, 1.0) if scatter else indices


def _topk_both(q: torch.Tensor, k: torch.Tensor, topk: int) -> None:
    topk_pack(q, topk)
    topk_pack(k, topk)


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def check_prefill(q, k, v, topk: int, out, dq, grad_out) -> dict:
    """Sampled-row errors of the kernel's out (and dq) against float64, with plain-PyTorch errors."""
    batch, heads, length, dim = q.shape
    flat = (batch * heads, length, dim)
    q_vals, q_idx, qd = topk_pack(q.detach(), topk)
    k_vals, _, kd = topk_pack(k.detach(), topk)
    topk_ok = sfa_check.topk_agrees(q.detach(), q_vals, topk) and sfa_check.topk_agrees(k.detach(), k_vals, topk)
    heads_used = slice(0, min(CHECK_HEADS, batch * heads))
    rows = torch.randperm(length, device=DEVICE)[:CHECK_ROWS].sort().values
    qd, kd, vf = (t.reshape(flat)[heads_used] for t in (qd, kd, v.detach()))  # (h, L, D)
    g = support = None
    if grad_out is not None:
        g = grad_out.reshape(flat)[heads_used][:, rows]  # (h, R, D)
        idx = q_idx.reshape(*flat[:2], -1)[heads_used][:, rows].long()  # (h, R, k)
        support = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True)
    ref_out, ref_dq = sfa_check.rows_attention(qd, kd, vf, rows, torch.float64, g, support)
    pt_out, pt_dq = sfa_check.rows_attention(qd, kd, vf, rows, q.dtype, g, support)
    got = out.reshape(flat)[heads_used][:, rows]
    result = {"kernel_err": sfa_check.rel_err(got, ref_out), "torch_err": sfa_check.rel_err(pt_out, ref_out)}
    if dq is not None:
        result["kernel_err"] = max(result["kernel_err"],
                                   sfa_check.rel_err(dq.reshape(flat)[heads_used][:, rows], ref_dq))
        result["torch_err"] = max(result["torch_err"], sfa_check.rel_err(pt_dq, ref_dq))
    result["ok"] = topk_ok and sfa_check.passes(result["kernel_err"], result["torch_err"], q.dtype)
    return result


def _tuned_forward_config() -> str:
    """The forward tile configuration the autotuner used for the latest call (its kwargs and launch sizes)."""
    from lra_sfa.kernels import flash_sfa_fwd as fwd

    config = getattr(fwd.flash_sfa_fwd_tuned, "best_config", None)  # set by the autotuner's first run
    if config is None:
        return ""
    options = " ".join(f"{name}={value}" for name, value in config.kwargs.items())
    return f"{options} warps={config.num_warps} stages={config.num_stages}"


def _forward_config(q: torch.Tensor) -> str:
    """What ran the forward of q (B, H, L, D) without padding: the Gluon kernel, or the Triton autotuner's pick."""
    if not gluon_eligible(q, False):
        return _tuned_forward_config()
    return "gluon ws " + " ".join(f"{name}={value}" for name, value in gluon_config(q.shape[-2]).items())


def bench_prefill(out_rows: RowWriter, checks: RowWriter, meta: dict, op: str, cache: dict, rep_ms: float) -> None:
    batch, heads, length, dim, topk = (meta[k] for k in ("batch", "heads", "seq_len", "head_dim", "topk"))
    q, k, v = random_qkv(batch, heads, length, dim, torch.bfloat16, seed=length + dim)
    grad = None if op == "fwd" else torch.randn_like(q)
    leaves = (q, k, v) if grad is None else tuple(leaf(t) for t in (q, k, v))
    sfa_ms, peak = time_ms(sfa_call(*leaves, topk, grad), rep_ms)
    for t in leaves:
        t.grad = None
    out = flash_sfa(*leaves, topk, topk)
    dq = None
    if grad is not None:
        out.backward(grad)
        dq = leaves[0].grad
    check = check_prefill(q, k, v, topk, out.detach(), dq, grad)
    fwd_config = _forward_config(q)
    _, _, qd = topk_pack(q, topk)
    _, _, kd = topk_pack(k, topk)
    for name in BACKENDS:
        key = (name, op, batch, heads, length, dim)
        if key not in cache:
            args = (q, k, v) if grad is None else tuple(leaf(t) for t in (q, k, v))
            cache[key] = time_ms(sdpa_call(name, *args, grad), rep_ms)[0]
        sparse_args = (qd, kd, v) if grad is None else tuple(leaf(t) for t in (qd, kd, v))
        sparse_ms = time_ms(sdpa_call(name, *sparse_args, grad), rep_ms)[0]
        base_ms = min(cache[key], sparse_ms)
        row = dict(meta, impl=SFA_IMPL, op=op, ms=round(sfa_ms, 4), baseline=f"sdpa_{name}",
                   baseline_ms=round(base_ms, 4), speedup=round(base_ms / sfa_ms, 4),
                   max_rel_err=f"{check['kernel_err']:.3e}", peak_mem_mb=round(peak, 1))
        out_rows.write(row)
        checks.write(dict(row, baseline_random_ms=round(cache[key], 4), baseline_sparse_ms=round(sparse_ms, 4),
                          torch_err=f"{check['torch_err']:.3e}", passes=check["ok"], fwd_config=fwd_config))
        print(f"{op:8s} L={length:>7d} d={dim:3d} k={topk:2d} B={batch} H={heads}: sfa {sfa_ms:8.3f} ms  "
              f"{name} {base_ms:8.3f} ms  x{base_ms / sfa_ms:5.2f}  err {check['kernel_err']:.2e} "
              f"(torch {check['torch_err']:.2e}) {'ok' if check['ok'] else 'FAIL'}", flush=True)


DECODE_DESIGNS = ("single", "twopass", "bounded", "prefetch")  # the optional fifth field of a decode config


def decode_launch(config: tuple[int, ...]) -> tuple[int, int, int, int, str]:
    """(BLOCK_N, warps, stages, programs per SM, design) from a config tuple whose fifth field is optional."""
    block_n, warps, stages, per_sm, *design = config
    return block_n, warps, stages, per_sm, DECODE_DESIGNS[design[0] if design else 0]


def bench_decode(out_rows: RowWriter, checks: RowWriter, meta: dict, rep_ms: float,
                 config: tuple[int, ...] | None = None) -> None:
    batch, heads, length, dim, topk = (meta[k] for k in ("batch", "heads", "seq_len", "head_dim", "topk"))
    _, k, v = random_qkv(batch, heads, length, dim, torch.bfloat16, seed=7 + length)
    q = torch.randn(batch, heads, 1, dim, device=DEVICE, dtype=torch.bfloat16)
    k_vals, k_idx = pack_k_cache(k, topk)
    del k
    block_n, warps, stages, per_sm, design = decode_launch(config or (*launch_defaults(dim, bounded=True), 3))
    bounded = design in ("bounded", "prefetch")
    k_range = cache_key_range(k_vals, k_idx, dim) if bounded else None  # cache state: not timed
    run = partial(sfa_decode, q, k_vals, k_idx, v, topk, block_n=block_n, num_warps=warps, num_stages=stages,
                  programs_per_sm=per_sm, two_pass=design == "twopass", k_range=k_range,
                  prefetch=design == "prefetch")
    sfa_ms, peak = time_ms(run, rep_ms)
    out = run()
    kd = torch.zeros(batch, heads, length, dim, device=DEVICE, dtype=torch.bfloat16)
    kd.scatter_(-1, k_idx.long(), k_vals)  # (B, H, L, D) dense codes of the cache
    _, _, qd = topk_pack(q, topk)
    flat = (batch * heads, 1, dim)
    qf, kf, vf = qd.reshape(flat), kd.reshape(batch * heads, length, dim), v.reshape(batch * heads, length, dim)
    rows = torch.zeros(1, dtype=torch.long, device=DEVICE)
    ref, _ = sfa_check.rows_attention(qf[:8], kf[:8], vf[:8], rows, torch.float64)
    plain, _ = sfa_check.rows_attention(qf[:8], kf[:8], vf[:8], rows, torch.bfloat16)
    kernel_err = sfa_check.rel_err(out.reshape(flat)[:8], ref)
    torch_err = sfa_check.rel_err(plain, ref)
    sparse_bytes, dense_bytes = cache_bytes_per_token(dim, topk, torch.bfloat16)
    for name in BACKENDS:
        base_rand = time_ms(sdpa_call(name, q, kd.normal_(), v), rep_ms)[0]
        kd.zero_().scatter_(-1, k_idx.long(), k_vals)
        base_sparse = time_ms(sdpa_call(name, q, kd, v), rep_ms)[0]
        base_ms = min(base_rand, base_sparse)
        row = dict(meta, impl=SFA_IMPL, op="decode", ms=round(sfa_ms, 4), baseline=f"sdpa_{name}",
                   baseline_ms=round(base_ms, 4), speedup=round(base_ms / sfa_ms, 4),
                   max_rel_err=f"{kernel_err:.3e}", peak_mem_mb=round(peak, 1))
        out_rows.write(row)
        checks.write(dict(row, baseline_random_ms=round(base_rand, 4), baseline_sparse_ms=round(base_sparse, 4),
                          torch_err=f"{torch_err:.3e}", passes=sfa_check.passes(kernel_err, torch_err, q.dtype),
                          cache_bytes_per_token=sparse_bytes, dense_bytes_per_token=dense_bytes))
        print(f"decode   L={length:>7d} d={dim:3d} k={topk:2d} B={batch} H={heads}: sfa {sfa_ms:8.3f} ms  {name} "
              f"{base_ms:8.3f} ms  x{base_ms / sfa_ms:5.2f}  err {kernel_err:.2e} (torch {torch_err:.2e}) "
              f"bytes/token {sparse_bytes} vs {dense_bytes}", flush=True)


def explore_log(out: str):
    """record(section, name, ms, note): one row of sfa_explore.csv, echoed to stdout."""
    log = RowWriter(Path(out) / "sfa_explore.csv", ["section", "name", "ms", "note"])

    def record(section: str, name: str, ms: float, note: str = "") -> None:
        log.write(dict(section=section, name=name, ms=round(ms, 4), note=note))
        print(f"{section:8s} {name:44s} {ms:9.4f} ms  {note}", flush=True)

    return record


def gpu_checks(record, which: list[int] | None = None) -> bool:
    """Forward and backward of the compiled kernels against the float64 reference at EXPLORE_CHECKS (or the
    entries numbered ``which``)."""
    all_ok = True
    for length, dim, topk, pad, dtype, *scale in (EXPLORE_CHECKS if which is None else
                                                  [EXPLORE_CHECKS[i] for i in which]):
        q, k, v = random_qkv(2, 3, length, dim, dtype, seed=length)
        if scale:
            q, k = q * scale[0], k * scale[0]
        mask = (torch.rand(2, length, device=DEVICE) > 0.3) if pad else None
        if mask is not None:
            mask[1] = False
        res = sfa_check.full_check(q, k, v, topk, mask, flash_sfa)
        errs = " ".join(f"{n}={res[n + '_err']:.1e}/{res[n + '_torch_err']:.1e}"
                        for n in ("out", "dq", "dk", "dv", "out_nograd"))
        paths = " ".join(f"{op}={'gluon' if test(q, pad) else 'triton'}"
                         for op, test in (("fwd", gluon_eligible), ("bwd", gluon_bwd_eligible)))
        record("check", f"L={length} d={dim} k={topk} pad={pad} {dtype} scale={(scale or [1.0])[0]} {paths}", 0.0,
               f"{errs} ok={res['ok']}")
        all_ok &= bool(res["ok"])
    parts = topk_edge_rows()
    record("check", "topk_pack zero/subnormal rows", 0.0, " ".join(f"{name}={ok}" for name, ok in parts.items()))
    return all_ok and all(parts.values())


def topk_edge_rows() -> dict[str, bool]:
    """topk_pack on the GPU on rows of zeros, of -0.0 and of bf16 subnormals, checked on the CPU:
    {check name: passed}."""
    x = torch.randn(4096, 128).to(torch.bfloat16)
    x[:1024] = 0.0
    x[1024:2048] = -0.0
    x[2048:3072] = (x[2048:3072].float() * torch.finfo(torch.bfloat16).smallest_normal / 16).to(torch.bfloat16)
    values, indices, dense = (t.cpu() for t in topk_pack(x.to(DEVICE), 8))
    ids = indices.long()
    return {"zero_rows_lowest_ids": bool((ids[:2048].sort(-1).values == torch.arange(8)).all()),
            "values_at_ids": torch.equal(torch.gather(x, -1, ids).view(torch.int16), values.view(torch.int16)),
            "dense_is_scatter": torch.equal(dense, torch.zeros_like(x).scatter(-1, ids, values)),
            "magnitudes_match_torch_topk": sfa_check.topk_agrees(x, values, 8)}


def explore(args) -> None:
    """GPU correctness on small shapes, then the forward designs and configs at one long shape, then decode.

    ``--sections`` picks the parts (see EXPLORE_SECTIONS), so one device call can time just one of them.
    """
    record, sections = explore_log(args.out), set(args.sections)
    if "checks" in sections:
        gpu_checks(record)
    if "topk" in sections:
        x = torch.randn(args.topk_rows, 128, device=DEVICE, dtype=torch.bfloat16)
        for topk in args.topks:
            record("topk", f"topk_pack {x.shape[0]}x128 k={topk}", time_ms(partial(topk_pack, x, topk))[0])
            for elems, warps in args.topk_launches:
                record("topk", f"topk_pack {x.shape[0]}x128 k={topk} elems={elems} w{warps}",
                       time_ms(partial(topk_pack, x, topk, True, elems, warps))[0])
            record("topk", f"torch.topk+scatter {x.shape[0]}x128 k={topk}",
                   time_ms(partial(_torch_topk_codes, x, topk))[0])
        del x
    if sections & {"fwd", "fwd_stages", "gluon", "variants", "bwd", "bwd_stages", "gluon_bwd", "full"}:
        explore_prefill(args, record, sections)
    if "decode" in sections:
        explore_decode(args, record)


def explore_prefill(args, record, sections: set[str]) -> None:
    """Forward tile configs (design A), the losing designs and ablations, then the full op beside SDPA."""
    from lra_sfa.kernels import flash_sfa_bwd as bwd
    from lra_sfa.kernels import flash_sfa_fwd as fwd
    from lra_sfa.kernels.flash_sfa import launch_forward, pad_bias
    from lra_sfa.kernels.flash_sfa_variants import ABLATION_MODES, run_variant

    length, dim, topk = args.explore_length, args.explore_dim, args.topks[0]
    q, k, v = random_qkv(1, 16, length, dim, torch.bfloat16, seed=1)
    flat = (16, length, dim)
    packs = {}
    for name, t in (("q", q), ("k", k)):
        vals, idx, dense = topk_pack(t, topk)
        packs.update({f"{name}_vals": vals.reshape(16, length, topk), f"{name}_idx": idx.reshape(16, length, topk),
                      f"{name}_dense": dense.reshape(flat)})
    vf, bias = v.reshape(flat), pad_bias(None, q.device)
    ref, _ = launch_forward(packs["q_dense"], packs["k_dense"], vf, bias, 16, False)
    for bm, bn, warps, stages, ws, *extra in args.fwd_configs if "fwd" in sections else ():
        split, bounded, fused, rowsum_2d = (bool(x) for x in (list(extra) + [0, 0, 0, 0])[:4])
        cfg = fwd.fwd_config(bm, bn, warps, stages, bool(ws), split, bounded, rowsum_2d)
        name = (f"tma {bm}x{bn} w{warps} s{stages} ws{ws}{' exp2split' * split}{' bounded' * bounded}"
                f"{' fused_q_topk' * fused}{' rowsum_2d' * rowsum_2d}")
        q_in = q.reshape(flat) if fused else packs["q_dense"]  # dense q: the kernel selects its top-k
        run = partial(launch_forward, q_in, packs["k_dense"], vf, bias, 16, False, cfg, topk if fused else 0)
        try:
            ms = time_ms(run)[0]
            got, _ = run()
            record("design_A", name, ms, f"maxdiff={(got.float() - ref.float()).abs().max().item():.1e} "
                   f"relerr={sfa_check.rel_err(got, ref):.1e}")
        except Exception as exc:  # a config the compiler rejects is reported, not fatal
            record("design_A", name, float("nan"), repr(exc)[:160])
    if "fwd_stages" in sections:
        explore_forward_stages(args, record, packs, vf)
    if "gluon" in sections:
        explore_gluon(args, record, packs, vf)
    for name in ("gather", "packed_k", *ABLATION_MODES) if "variants" in sections else ():
        for bn, stages in ((64, 3), (128, 2)):
            ms = time_ms(partial(run_variant, name, packs, vf, 128, bn, 8, stages))[0]
            got = run_variant(name, packs, vf, 128, bn, 8, stages)
            record("variant", f"{name} 128x{bn} w8 s{stages}", ms,
                   f"maxdiff={(got.float() - ref.float()).abs().max().item():.1e}")
    if "bwd" in sections:
        explore_backward(args, record, packs, vf, topk)
    if "bwd_stages" in sections:
        explore_backward_stages(args, record, packs, vf)
    if "gluon_bwd" in sections:
        explore_gluon_bwd(args, record, packs, vf, topk)
    if "full" not in sections:
        return
    record("full", "flash_sfa fwd (top-k + forward kernel)", time_ms(sfa_call(q, k, v, topk))[0],
           _forward_config(q))
    record("full", "topk_pack q and k", time_ms(partial(_topk_both, q, k, topk))[0])
    record("full", "topk_pack k (the forward-only path's)", time_ms(partial(topk_pack, k, topk))[0])
    grad = torch.randn_like(q)
    leaves = tuple(leaf(t) for t in (q, k, v))
    record("full", "flash_sfa fwd+bwd", time_ms(sfa_call(*leaves, topk, grad))[0],
           f"dkdv {bwd.dkdv_tuned.best_config} dq {bwd.dq_tuned.best_config}")
    sparse = (packs["q_dense"].reshape(q.shape), packs["k_dense"].reshape(k.shape), v)
    for name in BACKENDS:
        for label, inputs in (("random", (q, k, v)), ("sparse", sparse)):
            record("sdpa", f"{name} fwd {label}", time_ms(sdpa_call(name, *inputs))[0])
            record("sdpa", f"{name} fwd+bwd {label}", time_ms(sdpa_call(name, *(leaf(t) for t in inputs), grad))[0])


def _backward_inputs(packs: dict, v: torch.Tensor, topk: int) -> tuple[tuple, torch.Tensor]:
    """What the backward explorations share: ``launch_backward``'s saved tensors at the explore shape (the
    forward's out and lse2 included) and a random dout."""
    from lra_sfa.kernels.flash_sfa import launch_forward, pad_bias

    qd, kd = packs["q_dense"], packs["k_dense"]  # (B*H, L, D)
    batch_heads, length, _ = qd.shape
    bias = pad_bias(None, qd.device)
    out, lse2 = launch_forward(qd, kd, v, bias, batch_heads, False)
    q_idx, k_idx = (packs[f"{n}_idx"].reshape(batch_heads * length, topk) for n in ("q", "k"))
    return (qd, kd, v, out, lse2, bias, q_idx, k_idx), torch.randn_like(out)


def explore_backward(args, record, packs: dict, v: torch.Tensor, topk: int) -> None:
    """Each Triton backward kernel (dK/dV, dQ) alone at the explore shape, for each (BLOCK_M, BLOCK_N, warps,
    stages), against ``launch_backward`` (which runs the Gluon kernels where they apply)."""
    from lra_sfa.kernels import flash_sfa_bwd as bwd
    from lra_sfa.kernels import flash_sfa_fwd as fwd
    from lra_sfa.kernels.flash_sfa import launch_backward, pad_rows, row_descriptor, tile_descriptor

    saved, dout = _backward_inputs(packs, v, topk)
    qd, kd, _, out, lse2, bias, q_idx, k_idx = saved
    batch_heads, length, dim = qd.shape
    ref = launch_backward(saved, dout, batch_heads, False, topk, topk)
    record("bwd", "launch_backward (delta, dK/dV, dQ; Gluon where eligible)",
           time_ms(partial(launch_backward, saved, dout, batch_heads, False, topk, topk))[0],
           f"dkdv {getattr(bwd.dkdv_tuned, 'best_config', None)} dq {getattr(bwd.dq_tuned, 'best_config', None)}")
    grads = {name: torch.empty_like(qd) for name in ("DQ", "DK", "DV")}
    descs = {f"{name}_desc": tile_descriptor(t, 16)
             for name, t in (("Q", qd), ("K", kd), ("V", v), ("DO", dout), *grads.items())}
    lse_pad = pad_rows(lse2, float("inf"))  # lse2 / delta rows as launch_backward lays them out
    delta = pad_rows((out.float() * dout.float()).sum(-1), 0.0)
    common = dict(Bias=bias, L=length, H=batch_heads,
                  qk_scale=fwd.LOG2E / dim ** 0.5, sm_scale=1.0 / dim ** 0.5, l_bucket=length,
                  HEAD_DIM=dim, HAS_BIAS=False, IEEE=False, TOPK=topk, FULL_SUPPORT=False,
                  **{n: descs[n] for n in ("Q_desc", "K_desc", "V_desc", "DO_desc")})
    kernels = {"dkdv": (bwd.dkdv_kernel, dict(common, Kidx=k_idx, DK_desc=descs["DK_desc"], DV_desc=descs["DV_desc"],
                                             Lse_desc=row_descriptor(lse_pad), Delta_desc=row_descriptor(delta)),
                        "BLOCK_N", ("DK", "DV"), ref[1:]),
               "dq": (bwd.dq_kernel, dict(common, Qidx=q_idx, DQ_desc=descs["DQ_desc"], Lse=lse_pad, Delta=delta,
                                          L_PAD=lse_pad.shape[1]), "BLOCK_M", ("DQ",), ref[:1])}
    for name, configs in (("dkdv", args.dkdv_configs), ("dq", args.dq_configs)):
        kernel, kargs, grid_block, outs, expected = kernels[name]
        for block_m, block_n, warps, stages in configs:
            meta = dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages)
            grid = (triton.cdiv(length, meta[grid_block]), batch_heads)

            def run(kernel=kernel, grid=grid, kargs=kargs, meta=meta):
                bwd.set_bwd_block_shapes({**kargs, **meta})
                kernel[grid](**kargs, **meta)
            label = f"{name} {block_m}x{block_n} w{warps} s{stages}"
            try:
                ms = time_ms(run)[0]
                diff = max((grads[o].float() - e.float()).abs().max().item() for o, e in zip(outs, expected))
                rel = max(sfa_check.rel_err(grads[o], e) for o, e in zip(outs, expected))
                record("bwd", label, ms, f"maxdiff={diff:.1e} relerr={rel:.1e}")
            except Exception as exc:  # a config the compiler rejects is reported, not fatal
                record("bwd", label, float("nan"), repr(exc)[:160])


def explore_forward_stages(args, record, packs: dict, v: torch.Tensor) -> None:
    """Where the bounded forward loop's time goes (``flash_sfa_fwd_stages``), at the tiles of the first
    --fwd-configs entry."""
    from lra_sfa.kernels.flash_sfa_fwd_stages import FWD_STAGES, fwd_stage_runner

    block_m, block_n, warps, stages = args.fwd_configs[0][:4]
    for stage in FWD_STAGES:
        run = fwd_stage_runner(stage, packs["q_dense"], packs["k_dense"], v, block_m, block_n, warps, stages)
        record("fwd_stage", f"bounded {block_m}x{block_n} w{warps} s{stages}: {stage}", time_ms(run)[0])


def explore_gluon(args, record, packs: dict, v: torch.Tensor) -> None:
    """The experimental warp-specialised Gluon forward (``flash_sfa_gluon``) per --gluon-configs, against the
    Triton kernel's output, beside cuDNN on the same sparsified data."""
    from lra_sfa.kernels import flash_sfa_fwd as fwd
    from lra_sfa.kernels.flash_sfa import launch_forward, pad_bias
    from lra_sfa.kernels.flash_sfa_gluon import gluon_ws_forward

    qd, kd = packs["q_dense"], packs["k_dense"]
    ref, _ = launch_forward(qd, kd, v, pad_bias(None, qd.device), qd.shape[0], False,
                            fwd.fwd_config(64, 64, 4, 3, bounded=True))  # the Triton kernel (a forced config)
    for block_m, block_n, stages, consumers, maxnreg, *regs in args.gluon_configs:
        run = partial(gluon_ws_forward, qd, kd, v, block_m, block_n, stages, consumers, maxnreg, *regs)
        label = f"gluon ws {block_m}x{block_n} s{stages} c{consumers} maxnreg {maxnreg}" + "".join(
            f" consumer_regs {r}" for r in regs)
        try:
            got, _ = run()
            rel = sfa_check.rel_err(got, ref)
            finite = bool(torch.isfinite(got).all())
            record("gluon", label, time_ms(run)[0], f"relerr_vs_triton={rel:.1e} finite={finite}")
        except Exception as exc:  # a config the compiler or the launch rejects is reported, not fatal
            record("gluon", label, float("nan"), repr(exc)[:300])
    batch_heads, length, dim = qd.shape
    shaped = [t.reshape(1, batch_heads, length, dim) for t in (qd, kd, v)]
    record("gluon", "cudnn fwd sparse (same codes)", time_ms(sdpa_call("cudnn", *shaped))[0])


def explore_gluon_bwd(args, record, packs: dict, v: torch.Tensor, topk: int) -> None:
    """The Gluon backward kernels (``flash_sfa_bwd_gluon``) per --gluon-dq-configs / --gluon-dkdv-configs against
    the Triton kernels' outputs (``launch_backward`` with the Gluon backward turned off) and time."""
    from lra_sfa.kernels import flash_sfa as launcher
    from lra_sfa.kernels.flash_sfa import launch_backward, pad_rows
    from lra_sfa.kernels.flash_sfa_bwd_gluon import gluon_dkdv, gluon_dq

    saved, dout = _backward_inputs(packs, v, topk)
    qd, kd, _, out, lse2, _, q_idx, k_idx = saved
    batch_heads = qd.shape[0]
    use_gluon, launcher.USE_GLUON_BWD = launcher.USE_GLUON_BWD, False
    try:
        ref = launch_backward(saved, dout, batch_heads, False, topk, topk)
    finally:
        launcher.USE_GLUON_BWD = use_gluon
    lse_pad = pad_rows(lse2, float("inf"))
    delta = pad_rows((out.float() * dout.float()).sum(-1), 0.0)
    for block_m, block_n, stages, maxnreg, *regs in args.gluon_dq_configs:
        run = partial(gluon_dq, qd, kd, v, dout, lse_pad, delta, q_idx, topk, block_m, block_n, stages, maxnreg,
                      *regs)
        label = f"gluon dq {block_m}x{block_n} s{stages} c2 maxnreg {maxnreg}" + "".join(
            f" consumer_regs {r}" for r in regs)
        try:
            got = run()
            record("gluon_bwd", label, time_ms(run)[0], f"relerr_vs_triton={sfa_check.rel_err(got, ref[0]):.1e} "
                   f"maxdiff={(got.float() - ref[0].float()).abs().max().item():.1e}")
        except Exception as exc:  # a config the compiler or the launch rejects is reported, not fatal
            record("gluon_bwd", label, float("nan"), repr(exc)[:300])
    for block_m, block_n, stages, maxnreg, *regs in args.gluon_dkdv_configs:
        run = partial(gluon_dkdv, qd, kd, v, dout, lse_pad, delta, k_idx, topk, block_m, block_n, stages,
                      maxnreg, *regs)
        label = f"gluon dkdv {block_m}x{block_n} s{stages} c2 maxnreg {maxnreg}" + "".join(
            f" {name} {r}" for name, r in zip(("consumer_regs", "prefetch"), regs))
        try:
            got = run()
            rel = max(sfa_check.rel_err(g, r) for g, r in zip(got, ref[1:]))
            finite = all(bool(torch.isfinite(g).all()) for g in got)
            record("gluon_bwd", label, time_ms(run)[0], f"relerr_vs_triton={rel:.1e} finite={finite}")
        except Exception as exc:  # a config the compiler or the launch rejects is reported, not fatal
            record("gluon_bwd", label, float("nan"), repr(exc)[:300])
    record("gluon_bwd", "launch_backward (Gluon where eligible)",
           time_ms(partial(launch_backward, saved, dout, batch_heads, False, topk, topk))[0])


def explore_backward_stages(args, record, packs: dict, v: torch.Tensor) -> None:
    """Where the backward's time goes: each kernel with stages taken out (``flash_sfa_bwd_stages``), at the first
    of --dkdv-configs / --dq-configs."""
    from lra_sfa.kernels.flash_sfa import launch_forward, pad_bias
    from lra_sfa.kernels.flash_sfa_bwd_stages import DKDV_STAGES, DQ_STAGES, bwd_stage_runner

    qd, kd = packs["q_dense"], packs["k_dense"]  # (B*H, L, D)
    out, lse2 = launch_forward(qd, kd, v, pad_bias(None, qd.device), qd.shape[0], False)
    dout = torch.randn_like(out)
    delta = (out.float() * dout.float()).sum(-1)  # (B*H, L)
    for name, stages, config in (("dkdv", DKDV_STAGES, args.dkdv_configs[0]), ("dq", DQ_STAGES, args.dq_configs[0])):
        block_m, block_n, warps, num_stages = config
        for stage in stages:
            run = bwd_stage_runner(name, stage, qd, kd, v, dout, lse2, delta, block_m, block_n, warps, num_stages)
            record("bwd_stage", f"{name} {block_m}x{block_n} w{warps} s{num_stages}: {stage}", time_ms(run)[0])


def explore_decode(args, record) -> None:
    """The decode kernel's block, warp, stage and split grid at the second-longest decode length, beside SDPA."""
    dim, topk = 128, args.topks[0]
    batch, heads = shape_for(args.decode_lengths[-2], args.decode_tokens)
    _, kc, vc = random_qkv(batch, heads, args.decode_lengths[-2], dim, torch.bfloat16, seed=3)
    qc = torch.randn(batch, heads, 1, dim, device=DEVICE, dtype=torch.bfloat16)
    k_vals, k_idx = pack_k_cache(kc, topk)
    ref = sfa_decode(qc, k_vals, k_idx, vc, topk)
    k_range = cache_key_range(k_vals, k_idx, dim)  # cache state, kept up to date on append: not timed
    decode_ms = {}
    for config in args.decode_configs:
        block_n, warps, stages, per_sm, design = decode_launch(config)
        run = partial(sfa_decode, qc, k_vals, k_idx, vc, topk, block_n=block_n, num_warps=warps, num_stages=stages,
                      programs_per_sm=per_sm, two_pass=design == "twopass",
                      k_range=k_range if design in ("bounded", "prefetch") else None, prefetch=design == "prefetch")
        name = f"sfa_decode L={kc.shape[2]} B*H={batch * heads} bn{block_n} w{warps} s{stages} p{per_sm}"
        name += f" {design}" * (design != "single")
        try:
            diff = (run().float() - ref.float()).abs().max().item()
            decode_ms[config] = time_ms(run)[0]
            record("decode", name, decode_ms[config], f"maxdiff={diff:.1e}")
        except Exception as exc:  # a config the compiler rejects is reported, not fatal
            record("decode", name, float("nan"), repr(exc)[:160])
    best = min(args.decode_configs, key=lambda c: decode_ms.get(c, float("inf")), default=None)
    if best is not None and decode_launch(best)[4] == "bounded":  # stage timing: take the V / score stage out
        block_n, warps, stages, per_sm, _ = decode_launch(best)
        for ablate, label in ((1, "without V (scores, exp2, sums)"), (2, "without scores (V stream, exp2)")):
            run = partial(sfa_decode, qc, k_vals, k_idx, vc, topk, block_n=block_n, num_warps=warps,
                          num_stages=stages, programs_per_sm=per_sm, k_range=k_range, _ablate=ablate)
            record("decode", f"bounded bn{block_n} w{warps} s{stages} p{per_sm} {label}", time_ms(run)[0],
                   "stage timing: output not checked")
    for name in BACKENDS:
        record("decode", f"{name} decode L={kc.shape[2]}", time_ms(sdpa_call(name, qc, kc, vc))[0])


def run_sweep(args) -> None:
    out_dir = Path(args.out)
    rows = RowWriter(out_dir / "sfa_vs_sdpa.csv", KERNEL_CSV_COLUMNS, key=KERNEL_KEY)
    checks = RowWriter(out_dir / "sfa_checks.csv", COLUMNS + ["baseline_random_ms", "baseline_sparse_ms",
                                                             "torch_err", "passes", "cache_bytes_per_token",
                                                             "dense_bytes_per_token", "fwd_config"], key=KERNEL_KEY)
    base = dict(dtype="bf16", device=torch.cuda.get_device_name(), date=args.date)
    started, cache = time.time(), {}
    for dim in args.dims if "decode" in args.ops else ():
        for length in args.decode_lengths:
            for topk in args.topks:
                batch, heads = shape_for(length, args.decode_tokens)
                bench_decode(rows, checks, dict(base, batch=batch, heads=heads, seq_len=length, head_dim=dim,
                                                topk=topk), args.rep_ms, args.decode_config)
    if "fwd" not in args.ops and "fwd_bwd" not in args.ops:
        plot(out_dir / "sfa_vs_sdpa.csv", out_dir / "sfa_vs_sdpa.png")
        return
    topk_rows = RowWriter(out_dir / "sfa_topk.csv", ["rows", "head_dim", "topk", "topk_pack_ms", "torch_topk_ms",
                                                      "device", "date"], key=["rows", "head_dim", "topk"])
    x = torch.randn(args.topk_rows, 128, device=DEVICE, dtype=torch.bfloat16)
    for topk in args.topks:
        pack_ms = time_ms(partial(topk_pack, x, topk))[0]
        torch_ms = time_ms(partial(_torch_topk_codes, x, topk, False))[0]
        topk_rows.write(dict(rows=args.topk_rows, head_dim=128, topk=topk, topk_pack_ms=round(pack_ms, 4),
                             torch_topk_ms=round(torch_ms, 4), device=base["device"], date=args.date))
        print(f"top-k {args.topk_rows} rows x 128, k={topk}: topk_pack {pack_ms:.3f} ms, torch.topk {torch_ms:.3f} ms")
    del x
    pairs = [(dim, topk) for topk in args.topks for dim in args.dims]
    jobs = [(dim, topk, length, op) for dim, topk in pairs for length in args.lengths for op in ("fwd", "fwd_bwd")
            if op in args.ops]
    extra = [(dim, args.topks[0], length, "fwd") for dim in args.dims for length in args.fwd_extra_lengths
             if "fwd" in args.ops]
    per_dim = len(jobs) // len(pairs)  # the first (dim, topk) pair's jobs, then its extra lengths, then the rest
    jobs = jobs[:per_dim] + extra[:len(args.fwd_extra_lengths)] + jobs[per_dim:] + extra[len(args.fwd_extra_lengths):]
    for dim, topk, length, op in jobs:
        if time.time() - started > args.budget_s:
            print(f"budget of {args.budget_s} s spent: skipping {op} L={length} d={dim} k={topk}", flush=True)
            continue
        batch, heads = shape_for(length, args.tokens)
        meta = dict(base, batch=batch, heads=heads, seq_len=length, head_dim=dim, topk=topk)
        bench_prefill(rows, checks, meta, op, cache, args.rep_ms)
    plot(out_dir / "sfa_vs_sdpa.csv", out_dir / "sfa_vs_sdpa.png")


def merge(src: Path, out: Path) -> None:
    """Merge the benchmark CSVs found in ``src`` into ``out`` cell by cell (each src row replaces the out row
    of the same cell; every other out row stays), then redraw the plots."""
    from lra_sfa.bench import wide

    keys = {"sfa_vs_sdpa.csv": KERNEL_KEY, "sfa_checks.csv": KERNEL_KEY, "sfa_topk.csv": ["rows", "head_dim", "topk"],
            "sfa_wide.csv": wide.WIDE_KEY}
    found = [name for name in keys if (src / name).is_file()]
    if not found:
        raise SystemExit(f"lra_sfa.bench.kernels --mode merge: none of {sorted(keys)} in {src}")
    for name in found:
        with (src / name).open(newline="") as handle:
            reader = csv.DictReader(handle)
            rows, src_columns = list(reader), list(reader.fieldnames or [])
        columns = src_columns
        if (out / name).is_file():
            with (out / name).open(newline="") as handle:
                old_columns = list(csv.DictReader(handle).fieldnames or [])
            columns = old_columns + [c for c in src_columns if c not in old_columns]
        table = RowWriter(out / name, columns, key=keys[name])
        for row in rows:
            table.write(row)
        print(f"merged {len(rows)} rows of {src / name} into {out / name}")
    if (out / "sfa_vs_sdpa.csv").is_file():
        plot(out / "sfa_vs_sdpa.csv", out / "sfa_vs_sdpa.png")
    if (out / "sfa_wide.csv").is_file():
        wide.plot(out)


TABLE_HEADING = "## Table"


def markdown_table(csv_path: Path) -> str:
    """The README table of the ``sfa_triton`` rows: one line per (op, d, k, L), cuDNN and FA2 side by side."""
    import pandas as pd

    from lra_sfa.report_tables import md_table

    frame = pd.read_csv(csv_path)
    frame = frame[frame["impl"] == SFA_IMPL]
    frame = frame.assign(op_order=frame["op"].map({"fwd": 0, "fwd_bwd": 1, "decode": 2}))
    cells = ["op_order", "op", "head_dim", "topk", "seq_len"]
    rows = []
    for (_, op, dim, topk, length), group in frame.sort_values(cells).groupby(cells, sort=False):
        by = {row["baseline"]: row for _, row in group.iterrows()}
        first = group.iloc[0]
        base = [cell for b in ("sdpa_cudnn", "sdpa_fa2")
                for cell in ((f"{by[b]['baseline_ms']:.3f}", f"{by[b]['speedup']:.2f}") if b in by else ("", ""))]
        rows.append([op, dim, topk, length, f"{first['batch']}x{first['heads']}", f"{first['ms']:.3f}", *base,
                     f"{float(first['max_rel_err']):.1e}", f"{first['peak_mem_mb']:.0f}", first["date"]])
    headers = ["op", "d", "k", "L", "B x H", "SFA ms", "cuDNN ms", "x cuDNN", "FA2 ms", "x FA2", "rel. err",
               "peak MiB", "date"]
    return md_table(headers, rows) + "\n"


def write_table(out: Path) -> None:
    """Rewrite the table section (``TABLE_HEADING`` to the end) of ``out/README.md`` from ``out/sfa_vs_sdpa.csv``."""
    readme = out / "README.md"
    text = readme.read_text()
    if TABLE_HEADING not in text:
        raise SystemExit(f"lra_sfa.bench.kernels --mode table: {readme} has no '{TABLE_HEADING}' section")
    head = text[:text.index(TABLE_HEADING)]
    readme.write_text(f"{head}{TABLE_HEADING}\n\n{markdown_table(out / 'sfa_vs_sdpa.csv')}")
    print(f"wrote the table of {out / 'sfa_vs_sdpa.csv'} into {readme}")


def plot(csv_path: Path, png_path: Path) -> None:
    """Speedup over each SDPA backend against L, one panel per op."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = pd.read_csv(csv_path)
    frame = frame[frame["impl"] == SFA_IMPL]  # the wide-code rows have their own plot (lra_sfa.bench.wide)
    ops = [op for op in ("fwd", "fwd_bwd", "decode") if op in set(frame["op"])]
    fig, axes = plt.subplots(1, len(ops), figsize=(5.5 * len(ops), 4.2), squeeze=False)
    for ax, op in zip(axes[0], ops):
        part = frame[frame["op"] == op]
        for (dim, topk, baseline), group in part.groupby(["head_dim", "topk", "baseline"]):
            group = group.sort_values("seq_len")
            style = "-" if baseline.endswith("cudnn") else "--"
            ax.plot(group["seq_len"], group["speedup"], style, marker="o", ms=3,
                    label=f"d={dim} k={topk} vs {baseline.removeprefix('sdpa_')}")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length L")
        ax.set_ylabel("speedup (SDPA ms / SFA ms)")
        ax.set_title(f"SFA Triton {op}, bf16, {frame['device'].iloc[0]}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("sweep", "explore", "check", "plot", "merge", "table"), default="sweep")
    parser.add_argument("--src", default=None, help="--mode merge: a folder of benchmark CSVs (a device run's $OUT)")
    parser.add_argument("--out", default="results/kernels")
    parser.add_argument("--date", default=datetime.date.today().isoformat())
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--topks", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2**i for i in range(10, 18)])
    parser.add_argument("--fwd-extra-lengths", type=int, nargs="+", default=[2**18, 2**19])
    parser.add_argument("--decode-lengths", type=int, nargs="+", default=[2**13, 2**15, 2**17, 2**19])
    parser.add_argument("--tokens", type=int, default=2**19, help="batch*heads*L per prefill shape")
    parser.add_argument("--decode-tokens", type=int, default=2**24, help="batch*heads*L per decode shape")
    parser.add_argument("--rep-ms", type=float, default=300.0)
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--explore-length", type=int, default=16384)
    parser.add_argument("--explore-dim", type=int, default=128, help="head dim of --mode explore's prefill parts")
    parser.add_argument("--topk-rows", type=int, default=2**20)
    parser.add_argument("--ops", nargs="+", default=["fwd", "fwd_bwd", "decode"], choices=("fwd", "fwd_bwd", "decode"),
                        help="ops the sweep measures")
    parser.add_argument("--decode-config", type=lambda text: tuple(int(x) for x in text.split(",")),
                        default=None, help="BLOCK_N,warps,stages,programs_per_sm[,design] of the sweep's decode "
                        "(default: sfa_decode's bounded launch_defaults per head dim, with prefetch)")
    parser.add_argument("--decode-configs", type=lambda text: tuple(int(x) for x in text.split(",")), nargs="+",
                        default=[(32, 4, 3, 16), (32, 4, 3, 16, 2), (32, 4, 3, 32, 2), (32, 4, 3, 16, 3),
                                 (32, 4, 3, 32, 3), (32, 4, 3, 64, 3), (64, 4, 3, 32, 3)],
                        help="BLOCK_N,warps,stages,programs_per_sm[,design] tuples for the decode part of "
                        "--mode explore; design 0 single pass, 1 two pass, 2 bounded, 3 bounded with register "
                        "prefetch (DECODE_DESIGNS)")
    parser.add_argument("--checks", type=int, nargs="+", default=None, choices=range(len(EXPLORE_CHECKS)),
                        help="--mode check: run only these entries of EXPLORE_CHECKS (default all)")
    parser.add_argument("--sections", nargs="+", default=list(EXPLORE_SECTIONS), choices=EXPLORE_SECTIONS,
                        help="parts of --mode explore to run")
    parser.add_argument("--topk-launches", type=lambda text: tuple(int(x) for x in text.split(",")), nargs="+",
                        default=[(4096, 4), (2048, 4), (8192, 8), (4096, 8)],
                        help="elements_per_program,warps tuples for the topk part of --mode explore")
    parser.add_argument("--fwd-configs", type=lambda text: tuple(int(x) for x in text.split(",")), nargs="+",
                        default=[(128, 128, 8, 3, 0), (128, 64, 8, 3, 0), (64, 64, 4, 3, 0), (128, 128, 8, 3, 0, 0, 1),
                                 (128, 64, 8, 3, 0, 0, 1), (64, 64, 4, 3, 0, 0, 1), (64, 128, 4, 3, 0, 0, 1)],
                        help="BLOCK_M,BLOCK_N,warps,stages,warp_specialize[,exp2_split[,bounded[,fused_q_topk"
                        "[,rowsum_2d]]]] tuples for --mode explore")
    bwd_tuple = lambda text: tuple(int(x) for x in text.split(","))  # noqa: E731
    parser.add_argument("--gluon-configs", type=bwd_tuple, nargs="+",
                        default=[(64, 64, 3, 1, 128), (64, 64, 4, 2, 168, 240), (64, 128, 2, 2, 168, 240)],
                        help="BLOCK_M,BLOCK_N,stages,consumers,maxnreg[,consumer_regs] of the "
                        "warp-specialised Gluon forward for --mode explore's gluon part (consumers: compute "
                        "warpgroups per program)")
    parser.add_argument("--gluon-dq-configs", type=bwd_tuple, nargs="+",
                        default=[(64, 128, 2, 168, 240), (64, 64, 3, 168, 240)],
                        help="BLOCK_M,BLOCK_N,stages,maxnreg[,consumer_regs] of the Gluon dQ kernel (two compute "
                        "warpgroups) for --mode explore's gluon_bwd part")
    parser.add_argument("--gluon-dkdv-configs", type=bwd_tuple, nargs="+",
                        default=[(64, 64, 3, 168, 240, 1), (64, 64, 4, 168, 240, 1), (64, 64, 3, 168, 240)],
                        help="BLOCK_M,BLOCK_N,stages,maxnreg[,consumer_regs[,prefetch]] of the Gluon dK/dV kernel "
                        "for --mode explore's gluon_bwd part (BLOCK_N keys per compute warpgroup, two of them)")
    parser.add_argument("--dkdv-configs", type=bwd_tuple, nargs="+",
                        default=[(64, 128, 8, 4), (64, 128, 8, 3), (32, 64, 4, 4)],
                        help="BLOCK_M,BLOCK_N,warps,stages of the dK/dV kernel for the bwd part of --mode explore")
    parser.add_argument("--dq-configs", type=bwd_tuple, nargs="+",
                        default=[(128, 64, 8, 3), (64, 128, 4, 3), (128, 32, 4, 3)],
                        help="BLOCK_M,BLOCK_N,warps,stages of the dQ kernel for the bwd part of --mode explore")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.mode == "merge":
        merge(Path(args.src), Path(args.out))
        return
    if args.mode == "plot":
        plot(Path(args.out) / "sfa_vs_sdpa.csv", Path(args.out) / "sfa_vs_sdpa.png")
        return
    if args.mode == "table":
        write_table(Path(args.out))
        return
    if not torch.cuda.is_available():
        raise SystemExit("lra_sfa.bench.kernels needs a CUDA device (the SDPA baselines and timings are GPU-only)")
    if args.mode == "check":
        if not gpu_checks(explore_log(args.out), args.checks):
            raise SystemExit("lra_sfa.bench.kernels: a GPU check failed the DESIGN.md rule (see sfa_explore.csv)")
        return
    if args.mode == "explore":
        explore(args)
        return
    run_sweep(args)


if __name__ == "__main__":
    main()
