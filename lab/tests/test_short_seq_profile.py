"""lab.short_seq_profile's aggregation of profiler events (CPU; the probe itself needs CUDA)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from lab.short_seq_profile import kernel_table

CUDA, CPU = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU


def test_kernel_table_counts_device_kernels_per_call():
    events = [SimpleNamespace(name="topk_pack", device_type=CUDA, device_time=4.0),
              SimpleNamespace(name="fwd_kernel", device_type=CUDA, device_time=30.0),
              SimpleNamespace(name="topk_pack", device_type=CUDA, device_time=6.0),
              SimpleNamespace(name="fwd_kernel", device_type=CUDA, device_time=34.0),
              SimpleNamespace(name="aten::empty", device_type=CPU, device_time=0.0)]
    table = kernel_table(events, calls=2)
    assert table == {"topk_pack": (1.0, 5.0), "fwd_kernel": (1.0, 32.0)}
