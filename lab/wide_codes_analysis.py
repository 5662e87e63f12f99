"""How a trained ``attn=sfa_wide`` model's codes fill their buckets as the sequence grows.

    python -m lab.wide_codes_analysis RUN_DIR --lengths 256,1024,4096 --out results/kernels/wide_codes \
        [--label plain] [--examples 16] [--attn capacity_factor=2.0]

Loads ``RUN_DIR/checkpoint.pt`` (``torch.load(weights_only=True)``; the model, attention and task
configs come from the settings the checkpoint records), runs the task's test split generated at each
length through the model, and measures, per layer and per hash table (``codes=simhash``: table t
holds features [t D/k, (t+1) D/k); other codes: one table), over every (sequence, head):

* bucket occupancy: real keys per non-empty bucket (max, p99, mean), beside the mean of a Poisson
  bucket of isotropic codes, lambda / (1 - e^-lambda) with lambda = L k / D per table;
* incidences per query: (query, key) pairs sharing the table's bucket, isotropic L k / D per table;
* candidates per query: the kernel's own count (``mean_candidates`` of the backend's stats: keys
  sharing >= 1 feature with the query, each once), against the isotropic L k^2 / D;
* which tokens share buckets: the fraction of incidences between identical tokens and between two
  tokens of one type, and (``<label>_types.csv``) per query type the candidates by key type and
  their mean distance |i - j| / L, from exact candidate sets of sampled queries (with
  ``capacity_factor``, over the key codes the kernel attends: the entries over capacity dropped;
  occupancy and incidences are always those of the hash, before any capacity). Types follow the
  needle task (``tasks/needle.py``): cls, filler, needle_key, needle_value, other_key, other_value,
  query_marker, query_key (the final token, which repeats the needle's key).

``--attn KEY=VALUE`` changes the attention at analysis time (e.g. ``capacity_factor=2.0`` or
``D_grow_from=256`` on a model trained without it; with ``D_grow_from`` the column ``D`` and the isotropic
counts are those of the grown space D(L)). Writes ``<label>.csv`` and ``<label>_types.csv`` under
``--out``, then draws ``wide_codes.png`` from every ``*.csv`` there (occupancy and candidates against L).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from lab.wide_codes_plot import plot_dir
from lra_sfa.kernels.wide.capacity import apply_capacity
from lra_sfa.model import LRAClassifier
from lra_sfa.recording import build_task
from lra_sfa.sfa_wide import SFAWideAttention

TYPES = ("cls", "filler", "needle_key", "needle_value", "other_key", "other_value", "query_marker", "query_key")
SAMPLED_QUERIES = 48  # exact candidate sets per (sequence, head): the needle's tokens, the query's, random others


def load_run(run_dir: Path, weights: str, attn_overrides: list[str]) -> tuple[LRAClassifier, dict]:
    """The model of ``run_dir/checkpoint.pt`` with ``weights`` (best_val or final) and its config groups."""
    path = run_dir / "checkpoint.pt"
    if not path.is_file():
        raise SystemExit(f"wide_codes_analysis: no checkpoint at {path} (train with trainer.checkpoint_every > 0)")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or "settings" not in payload or "model" not in payload:
        raise SystemExit(f"wide_codes_analysis: {path} is not an lra-sfa checkpoint (no settings/model)")
    nested: dict = {}
    for key, value in payload["settings"].items():  # dotted keys -> nested groups
        if "." not in key:  # the seed
            continue
        node, *parts, leaf = key.split(".")
        target = nested.setdefault(node, {})
        for part in parts:
            target = target.setdefault(part, {})
        target[leaf] = value
    cfg = OmegaConf.create(nested)
    if cfg.attn.get("_target_") != "lra_sfa.sfa_wide.SFAWideAttention":
        raise SystemExit(f"wide_codes_analysis: {path} holds attn {cfg.attn.get('_target_')}, not sfa_wide")
    cfg.attn = OmegaConf.merge(cfg.attn, OmegaConf.from_dotlist(attn_overrides))
    task = build_task(cfg.task)
    model = LRAClassifier(vocab_size=task.vocab_size, num_classes=task.num_classes, seq_len=int(cfg.task.seq_len),
                          attn_cfg=cfg.attn, pooling=task.pooling, dual=task.dual, has_padding=task.has_padding,
                          **OmegaConf.to_container(cfg.model, resolve=True))
    state = payload["best_weights"] if weights == "best_val" and payload.get("best_weights") else payload["model"]
    model.load_state_dict(state)
    return model.eval(), cfg


def token_types(tokens: torch.Tensor, task_cfg) -> torch.Tensor:
    """(B, L) needle tokens -> (B, 1 + L) type ids (TYPES), the CLS position first."""
    first_key = 2 + int(task_cfg.filler_vocab)
    first_value = first_key + int(task_cfg.num_keys)
    types = torch.full_like(tokens, TYPES.index("filler"))
    types[tokens >= first_key] = TYPES.index("other_key")
    types[tokens >= first_value] = TYPES.index("other_value")
    haystack = torch.arange(tokens.shape[1], device=tokens.device) < tokens.shape[1] - 2  # (L,)
    needle = (tokens == tokens[:, -1:]) & haystack  # (B, L): the queried key inside the haystack
    types[needle] = TYPES.index("needle_key")
    types[:, 1:][needle[:, :-1]] = TYPES.index("needle_value")
    types[:, -2] = TYPES.index("query_marker")
    types[:, -1] = TYPES.index("query_key")
    return torch.cat([torch.zeros_like(tokens[:, :1]), types], dim=1)


class CodeTap:
    """Forward hook on an SFAWideAttention: keeps the hard codes of its last call, the key codes the kernel
    attends over (with ``capacity_factor``, the entries over capacity marked PRUNED) and its stats."""

    def __init__(self, module: SFAWideAttention) -> None:
        self.module, self.codes, self.attended, self.stats = module, None, None, {}
        module.register_forward_hook(self.hook)

    def hook(self, module, inputs, output) -> None:
        q, k = inputs[0], inputs[1]
        mask = inputs[3] if len(inputs) > 3 else None
        with torch.no_grad():
            q_idx, q_val, _ = module._encode(q)
            k_idx, k_val, _ = module._encode(k)
        self.codes = (q_idx, q_val, k_idx, k_val)
        self.attended = self.codes
        capacity = module._capacity(q.shape[2])
        if capacity is not None:
            B, H, L, K = k_idx.shape
            real = None if mask is None else mask[:, None, :].expand(B, H, L).reshape(B * H, L)
            pruned = apply_capacity(q_idx.reshape(B * H, L, K), k_idx.reshape(B * H, L, K),
                                    k_val.reshape(B * H, L, K), real, module.num_features(L), capacity)[0]
            self.attended = (q_idx, q_val, pruned.view(B, H, L, K), k_val)
        self.stats = module.stats()


def _counts(keys: torch.Tensor, space: torch.Tensor) -> torch.Tensor:
    """How often each id of ``space`` (sorted unique) occurs in ``keys``."""
    return torch.bincount(torch.searchsorted(space, keys), minlength=space.numel())


def _pair_sum(q_keys: torch.Tensor, k_keys: torch.Tensor) -> int:
    """sum over ids of (#q with that id) x (#k with that id): the incidences of bucketed ids."""
    space = torch.unique(torch.cat([q_keys, k_keys]))
    return int((_counts(q_keys, space) * _counts(k_keys, space)).sum())


def table_rows(codes, types: torch.Tensor, tokens: torch.Tensor, D: int, tables: int) -> list[dict]:
    """Occupancy and incidence statistics per table (and 'all') over every (sequence, head)."""
    q_idx, _, k_idx, _ = codes
    B, H, L, K = k_idx.shape
    width = D // tables
    group = torch.arange(B * H, device=k_idx.device).view(B, H, 1, 1) * D
    qb, kb = (q_idx + group).reshape(-1), (k_idx + group).reshape(-1)  # global bucket ids
    q_tab, k_tab = (q_idx // width).reshape(-1), (k_idx // width).reshape(-1)
    expand = (B, H, L, K)
    ty_q = ty_k = types[:, None, :, None].expand(*expand).reshape(-1)
    tok = torch.cat([torch.zeros_like(tokens[:, :1]), tokens], 1)[:, None, :, None].expand(*expand).reshape(-1)
    rows = []
    for table in [*range(tables), None]:
        sel_q = torch.ones_like(q_tab, dtype=torch.bool) if table is None else q_tab == table
        sel_k = torch.ones_like(k_tab, dtype=torch.bool) if table is None else k_tab == table
        _, sizes = torch.unique(kb[sel_k], return_counts=True)
        sizes = sizes.float()
        incid = _pair_sum(qb[sel_q], kb[sel_k])
        same_tok = _pair_sum(qb[sel_q] * 256 + tok[sel_q], kb[sel_k] * 256 + tok[sel_k])
        same_type = _pair_sum(qb[sel_q] * 16 + ty_q[sel_q], kb[sel_k] * 16 + ty_k[sel_k])
        per_table = L * K / D  # isotropic keys per bucket of one table
        rows.append({
            "table": "all" if table is None else str(table),
            "occupancy_max": float(sizes.max()), "occupancy_p99": float(torch.quantile(sizes, 0.99)),
            "occupancy_mean": float(sizes.mean()), "occupancy_isotropic": per_table / -math.expm1(-per_table),
            "incidences_per_query": incid / (B * H * L),
            "incidences_isotropic": per_table * (tables if table is None else 1) * (K // tables),
            "frac_same_token": same_tok / max(1, incid), "frac_same_type": same_type / max(1, incid),
        })
    return rows


def sampled_queries(types: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """(B, S) query positions: CLS, every needle and query token, then random ones."""
    B, L = types.shape
    out = []
    for b in range(B):
        special = torch.nonzero(types[b] != TYPES.index("filler")).flatten().tolist()
        filler = torch.nonzero(types[b] == TYPES.index("filler")).flatten().numpy()
        rest = rng.choice(filler, size=min(len(filler), SAMPLED_QUERIES - len(special)), replace=False).tolist()
        out.append(special + rest)
    return torch.tensor(out)


def type_rows(codes, types: torch.Tensor, positions: torch.Tensor, key_chunk: int = 1 << 14) -> list[dict]:
    """Exact candidate sets of the sampled queries (keys compared in chunks of ``key_chunk``): per query
    type, the mean candidates by key type and their mean distance |i - j| / L."""
    q_idx, _, k_idx, _ = codes
    B, H, L, K = k_idx.shape
    dev = k_idx.device
    S = positions.shape[1]
    qs = torch.gather(q_idx, 2, positions[:, None, :, None].expand(B, H, S, K))  # (B, H, S, K)
    by_type = torch.zeros(B, H, S, len(TYPES), device=dev)  # candidates per key type
    dist_sum = torch.zeros(B, H, S, device=dev)
    for j0 in range(0, L, key_chunk):
        keys = k_idx[:, :, j0:j0 + key_chunk]  # (B, H, c, K)
        shared = (qs[:, :, :, None, :, None] == keys[:, :, None, :, None, :]).any(-1).any(-1)  # (B, H, S, c)
        onehot = torch.nn.functional.one_hot(types[:, j0:j0 + key_chunk], len(TYPES)).float()  # (B, c, T)
        by_type += torch.einsum("bhsc,bct->bhst", shared.float(), onehot)
        dist = (positions[:, None, :, None] - torch.arange(j0, j0 + keys.shape[2], device=dev)).abs().float()
        dist_sum += (shared * dist / L).sum(-1)
    q_type = torch.gather(types, 1, positions)[:, None, :].expand(B, H, S)  # (B, H, S)
    total = by_type.sum(-1)
    rows = []
    for qt in q_type.unique().tolist():
        sel = q_type == qt
        row = {"query_type": TYPES[qt], "queries": int(sel.sum()), "candidates": float(total[sel].mean()),
               "mean_distance_frac": float(dist_sum[sel].sum() / total[sel].sum().clamp_min(1))}
        row.update({f"cand_{name}": float(by_type[sel][:, kt].mean()) for kt, name in enumerate(TYPES)})
        rows.append(row)
    return rows


def analyse_length(model, cfg, length: int, examples: int, batch: int, cache_dir: str, taps: list[CodeTap],
                   rng: np.random.Generator, device: torch.device) -> tuple[list[dict], list[dict]]:
    """Rows of both tables at one length (the test split generated at ``length``)."""
    task = build_task(OmegaConf.merge(cfg.task, {"seq_len": length, "num_train": 0, "num_val": 0,
                                                 "num_test": examples}))
    split = task.load(cache_dir).test
    model.extend_positions(length)
    first = taps[0].module
    space = first.num_features(length + 1)  # D, or D(L) with attn.D_grow_from (the CLS token makes L + 1)
    tables = first.k if first.codes == "simhash" else 1
    per_layer: dict = {}
    correct = 0
    for start in range(0, examples, batch):
        tokens = torch.from_numpy(split.inputs[start:start + batch].astype(np.int64)).to(device)
        labels = torch.from_numpy(split.labels[start:start + batch].astype(np.int64)).to(device)
        with torch.no_grad():
            correct += int((model(tokens).argmax(-1) == labels).sum())
        types = token_types(tokens, cfg.task)
        positions = sampled_queries(types.cpu(), rng).to(device)
        for layer, tap in enumerate(taps):
            acc = per_layer.setdefault(layer, {"tables": [], "types": [], "stats": []})
            acc["tables"].append(table_rows(tap.codes, types, tokens, space, tables))
            acc["types"].append(type_rows(tap.attended, types, positions))
            acc["stats"].append(tap.stats)
    base = {"seq_len": length, "attn_len": length + 1, "D": space, "k": first.k, "examples": examples,
            "accuracy": correct / examples}
    rows, trows = [], []
    for layer, acc in per_layer.items():
        stats = pd.DataFrame(acc["stats"]).mean().to_dict()
        extra = {f"stat_{key}": value for key, value in stats.items()}
        iso = (length + 1) * first.k ** 2 / space
        head = {**base, "layer": layer, "candidates_per_query": stats["mean_candidates"],
                "isotropic_candidates": iso, "candidates_ratio": stats["mean_candidates"] / iso}
        table_frame = pd.DataFrame([r for batch_rows in acc["tables"] for r in batch_rows])
        for table, frame in table_frame.groupby("table", sort=False):
            summary = frame.drop(columns="table").mean().to_dict()
            summary["occupancy_max"] = frame["occupancy_max"].max()
            rows.append({**head, "table": table, **summary, **extra})
        type_frame = pd.DataFrame([r for batch_rows in acc["types"] for r in batch_rows])
        for qtype, frame in type_frame.groupby("query_type", sort=False):
            weights = frame["queries"] / frame["queries"].sum()
            means = {c: float((frame[c] * weights).sum()) for c in frame.columns if c not in ("query_type", "queries")}
            trows.append({**base, "layer": layer, "query_type": qtype, "queries": int(frame["queries"].sum()), **means})
    return rows, trows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--lengths", default="256,1024,4096")
    parser.add_argument("--out", type=Path, default=Path("results/kernels/wide_codes"))
    parser.add_argument("--label", default="plain")
    parser.add_argument("--examples", type=int, default=16, help="test sequences per length")
    parser.add_argument("--tokens-per-batch", type=int, default=16384)
    parser.add_argument("--weights", choices=("best_val", "final"), default="best_val")
    parser.add_argument("--attn", nargs="*", default=[], help="attention overrides KEY=VALUE at analysis time")
    parser.add_argument("--cache-dir", default="~/.cache/lra_sfa")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    model, cfg = load_run(args.run_dir, args.weights, args.attn)
    model.to(device)
    taps = [CodeTap(module) for module in model.attention_modules()]
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, trows = [], []
    for length in (int(x) for x in args.lengths.split(",")):
        batch = max(1, args.tokens_per_batch // length)
        got, tgot = analyse_length(model, cfg, length, args.examples, batch, args.cache_dir, taps, rng, device)
        rows += got
        trows += tgot
        for row in got:
            if row["table"] == "all":
                print(f"L={length} layer {row['layer']}: acc {row['accuracy']:.3f}  candidates "
                      f"{row['candidates_per_query']:.2f} (isotropic {row['isotropic_candidates']:.2f}, "
                      f"x{row['candidates_ratio']:.1f})  occupancy mean {row['occupancy_mean']:.2f} "
                      f"max {row['occupancy_max']:.0f}  same token {row['frac_same_token']:.2f}", flush=True)
        pd.DataFrame(rows).assign(label=args.label).to_csv(args.out / f"{args.label}.csv", index=False)
        pd.DataFrame(trows).assign(label=args.label).to_csv(args.out / f"{args.label}_types.csv", index=False)
    plot_dir(args.out)


if __name__ == "__main__":
    main()
