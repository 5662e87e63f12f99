"""GPU probe: the SM clock and board power while the FlashSFA forward and cuDNN's forward run back to back.

The forward's stage ablations (lab/kernels/fwd_stages.py; results/kernels/NOTES.md) find each matmul loop
at ~610-660 TFLOP/s, ~65% of the H200's nominal bf16 peak (989 TFLOP/s at
the boost clock). This probe reads nvidia-smi every 50 ms while each kernel
runs for ~2 s at L = 16K, d = 128, k = 8, 16 heads, so the notes can say how
much of that is the clock. Writes clock_probe.csv (kernel, sample, sm_mhz,
power_w) into the folder given as the first argument and prints the medians.
"""

import csv
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from lra_sfa.kernels.sfa.autograd import flash_sfa
from lra_sfa.kernels.sfa.topk_pack import topk_pack


def sample(stop: threading.Event, rows: list) -> None:
    while not stop.is_set():
        line = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True).stdout.strip().splitlines()[0]
        mhz, watts = (float(x) for x in line.split(","))
        rows.append((mhz, watts))
        time.sleep(0.05)


def probe(name: str, fn, seconds: float = 2.0) -> list:
    fn()
    torch.cuda.synchronize()
    rows, stop = [], threading.Event()
    thread = threading.Thread(target=sample, args=(stop, rows))
    thread.start()
    end = time.time() + seconds
    while time.time() < end:
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
    stop.set()
    thread.join()
    print(f"{name}: median SM clock {statistics.median(r[0] for r in rows):.0f} MHz, "
          f"power {statistics.median(r[1] for r in rows):.0f} W ({len(rows)} samples)", flush=True)
    return [(name, i, mhz, watts) for i, (mhz, watts) in enumerate(rows)]


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    q, k, v = (torch.randn(1, 16, 16384, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    qs, ks = topk_pack(q, 8)[2], topk_pack(k, 8)[2]
    rows = probe("idle", lambda: time.sleep(0.01), 1.0)
    with torch.no_grad():
        rows += probe("flash_sfa fwd", lambda: flash_sfa(q, k, v, 8, 8, None))
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            rows += probe("cudnn fwd (sparsified q, k)", lambda: F.scaled_dot_product_attention(qs, ks, v))
    with open(out / "clock_probe.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["kernel", "sample", "sm_mhz", "power_w"])
        writer.writerows(rows)


if __name__ == "__main__":
    main()
