"""Which SFA kernels run, and what the record calls them: the Gluon / Triton rule, impl=gluon's errors, attn_path.

CPU tests: the device is monkeypatched (compute capability, interpreter,
Gluon availability) as the GPU sees it; tests/test_kernels_gpu.py checks the
same naming on a real H100 / H200.
"""

import pytest
import torch

pytest.importorskip("triton")

from lra_sfa.kernels.sfa import api, dispatch  # noqa: E402
from lra_sfa.sfa import SFAAttention  # noqa: E402

CUDA = torch.device("cuda")


@pytest.fixture
def hopper(monkeypatch):
    """dispatch sees a CUDA sm_90 device with Gluon available, outside the interpreter."""
    monkeypatch.setattr(dispatch, "interpreting", lambda: False)
    monkeypatch.setattr(dispatch.torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(dispatch, "_gluon_available", lambda: True)
    monkeypatch.setattr(dispatch, "USE_GLUON", True)
    monkeypatch.setattr(dispatch, "USE_GLUON_BWD", True)


@pytest.mark.parametrize("length,head_dim,dtype,mask,backward,expected", [
    (2048, 128, torch.bfloat16, False, False, "gluon"),
    (2048, 128, torch.float16, False, True, "triton_fwd+gluon_bwd"),  # fp16 forward: online, in Triton
    (2048, 128, torch.float16, False, False, "triton"),
    (1984, 128, torch.bfloat16, False, False, "gluon"),  # a multiple of 64: the one-warpgroup forward
    (1984, 128, torch.bfloat16, False, True, "gluon_fwd+triton_bwd"),  # the backward needs L % 128 == 0
    (2048, 64, torch.bfloat16, False, True, "triton_fwd+gluon_bwd"),  # d=64 keeps the Triton forward
    (2048, 64, torch.bfloat16, False, False, "triton"),
    (2048, 128, torch.float32, False, True, "triton"),
    (2048, 128, torch.bfloat16, True, True, "triton"),  # a padding mask
    (1000, 128, torch.bfloat16, False, False, "triton"),
])
def test_auto_names_the_kernels_that_run(hopper, length, head_dim, dtype, mask, backward, expected):
    assert dispatch.kernel_path(CUDA, dtype, length, head_dim, mask, "auto", backward) == expected
    assert dispatch.kernel_path(CUDA, dtype, length, head_dim, mask, "triton", backward) == "triton"


def test_auto_follows_the_environment_overrides_and_explicit_choices_ignore_them(hopper, monkeypatch):
    monkeypatch.setattr(dispatch, "USE_GLUON_BWD", False)
    assert dispatch.kernel_path(CUDA, torch.bfloat16, 2048, 128, False, "auto", True) == "gluon_fwd+triton_bwd"
    monkeypatch.setattr(dispatch, "USE_GLUON", False)
    assert dispatch.kernel_path(CUDA, torch.bfloat16, 2048, 128, False, "auto", True) == "triton"
    assert dispatch.kernel_path(CUDA, torch.bfloat16, 2048, 128, False, "gluon", True) == "gluon"


@pytest.mark.parametrize("length,head_dim,dtype,mask,backward,message", [
    (2048, 128, torch.float32, False, False, "fp16 / bf16, got torch.float32"),
    (2048, 128, torch.bfloat16, True, False, "no key_padding_mask"),
    (2048, 64, torch.bfloat16, False, False, "forward takes head_dim 128 and L a multiple of 64, got head_dim=64"),
    (1000, 128, torch.bfloat16, False, False, "L=1000"),
    (1984, 128, torch.bfloat16, False, True, "backward takes head_dim 64 or 128 and L a multiple of 128"),
])
def test_gluon_where_it_cannot_run_raises_the_rule(hopper, length, head_dim, dtype, mask, backward, message):
    with pytest.raises(ValueError, match="kernels='gluon' cannot run") as error:
        dispatch.kernel_path(CUDA, dtype, length, head_dim, mask, "gluon", backward)
    assert message in str(error.value) and "impl=triton" in str(error.value)


def test_gluon_needs_hopper(hopper, monkeypatch):
    monkeypatch.setattr(dispatch.torch.cuda, "get_device_capability", lambda device=None: (10, 0))
    with pytest.raises(ValueError, match="sm_90 .H100/H200., got sm_100"):
        dispatch.uses_gluon(CUDA, torch.bfloat16, 2048, 128, False, "gluon", backward=False)
    assert dispatch.kernel_path(CUDA, torch.bfloat16, 2048, 128, False, "auto", True) == "triton"


def test_the_kernel_head_dims_agree_with_the_launcher():
    from lra_sfa.kernels.sfa.launcher import SUPPORTED_HEAD_DIMS

    assert api.KERNEL_HEAD_DIMS == SUPPORTED_HEAD_DIMS
    assert [api.kernel_head_dim(d) for d in (4, 16, 24, 96, 128)] == [16, 16, 32, 128, 128]


def test_impl_gluon_on_the_cpu_is_unsupported_with_its_reason_and_raises_if_run():
    q = torch.randn(1, 2, 128, 128)
    backend = SFAAttention(topk=8, impl="gluon", head_dim=128)
    reasons = backend.unsupported_reasons(q, q, q)
    assert any("impl=gluon" in r and "CUDA sm_90" in r for r in reasons), reasons
    with pytest.raises(ValueError, match="gluon"):
        backend(q, q, q)


def test_attn_path_names_the_cpu_paths():
    q, k, v = (torch.randn(1, 2, 33, 16, requires_grad=True) for _ in range(3))
    backend = SFAAttention(topk=4, impl="auto")
    backend(q, k, v).sum().backward()
    assert backend.last_path == "reference"
    if not dispatch.interpreting():
        pytest.skip("the Triton kernels run on the CPU only under TRITON_INTERPRET=1 (set by conftest without CUDA)")
    backend = SFAAttention(topk=4, impl="triton")  # the Triton kernels on the CPU interpreter
    out = backend(q, k, v)
    assert backend.last_path == "triton" and out.shape == q.shape
    assert api.sfa_path(q, k, v, impl="reference") == "reference"


def test_impl_choices_name_gluon_and_sdpa():
    assert api.IMPLS == ("auto", "reference", "triton", "gluon", "sdpa")
    with pytest.raises(ValueError, match="'gluon'"):
        SFAAttention(impl="flash")


def test_config_reaches_gluon(make_cfg):
    from lra_sfa.attention import build_attention

    cfg = make_cfg("attn=sfa", "attn.impl=gluon")
    backend = build_attention(cfg.attn, num_heads=2, head_dim=64, max_seq_len=128)
    assert isinstance(backend, SFAAttention) and backend.impl == "gluon"


def test_the_run_record_names_the_kernel_and_refuses_gluon_off_hopper(make_cfg):
    """Through the real runner: attn.impl=triton (the CPU interpreter) records attn_path "triton+trimmed" (a
    right-padded task with cls pooling: padding rows skipped without packing); attn.impl=gluon
    on the CPU ends as `unsupported` with the Gluon rule as its reason, not a crash or a silent fallback."""
    from lra_sfa.train import run

    if not dispatch.interpreting():
        pytest.skip("the Triton kernels run on the CPU only under TRITON_INTERPRET=1 (set by conftest without CUDA)")
    small = ["task=listops", "model=tiny", "task.seq_len=16", "task.max_depth=2", "task.min_length=3",
             "task.max_length=13", "task.num_train=64", "task.num_val=16", "task.num_test=16", "task.workers=1",
             "attn=sfa", "attn.topk=2", "trainer.max_steps=2", "trainer.batch_size=4", "trainer.eval_every=2",
             "trainer.device=cpu"]
    record = run(make_cfg(*small, "attn.impl=triton"))
    assert record["status"] == "ok" and record["attn_path"] == "triton+trimmed", record  # right padding, cls pooling
    record = run(make_cfg(*small, "attn.impl=gluon"))
    assert record["status"] == "unsupported" and "impl=gluon" in record["reason"], record.get("reason")


@pytest.mark.parametrize("impl, kernels", [("auto", "auto"), ("triton", "triton"), ("gluon", "gluon")])
def test_sfa_attention_hands_the_kernels_the_choice_sfa_path_reports(monkeypatch, impl, kernels):
    """impl="auto" on CUDA resolves to the kernels and must still let dispatch choose Gluon or Triton (as
    ``sfa_path`` reports); forcing "triton" there would record "gluon" for a Triton run. The CUDA resolution is
    stood in for on the CPU; the GPU test ``test_attn_path_says_gluon_when_gluon_ran`` checks the kernels ran."""
    from lra_sfa.kernels.sfa import autograd

    seen = []
    monkeypatch.setattr(api, "resolve_impl", lambda impl, device: "triton" if impl == "auto" else impl)
    monkeypatch.setattr(autograd, "flash_sfa", lambda q, *args, **kwargs: seen.append(args[-1]) or q)
    q = torch.randn(1, 2, 8, 16)
    api.sfa_attention(q, q, q, topk_q=4, impl=impl)
    assert seen == [kernels]
