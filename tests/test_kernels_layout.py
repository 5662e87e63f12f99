"""The kernel package's public surface: names users import keep working, old module paths say where they went,
and importing the package (or lra_sfa) does not import Triton."""

import importlib
import subprocess
import sys

import pytest

from lra_sfa.kernels._moved import MOVED


def test_public_names_stay_importable():
    import lra_sfa
    from lra_sfa.kernels import (
        IMPLS,
        check_qkv,
        resolve_impl,
        sfa_attention,
        sfa_chunked,
        sfa_dense_reference,
        sfa_path,
        sparsify,
        topk_support,
    )

    assert lra_sfa.sfa_attention is sfa_attention and "gluon" in IMPLS
    assert all(callable(f) for f in (check_qkv, resolve_impl, sfa_chunked, sfa_dense_reference, sfa_path, sparsify,
                                     topk_support))


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_paths_import_with_a_one_line_pointer(old):
    pytest.importorskip("triton")
    sys.modules.pop(old, None)
    with pytest.warns(FutureWarning, match=f"{old} moved to {MOVED[old]}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])


def test_the_readme_decode_import_still_runs():
    pytest.importorskip("triton")
    sys.modules.pop("lra_sfa.kernels.sfa_decode", None)
    with pytest.warns(FutureWarning, match="lra_sfa.kernels.decode.launcher"):
        from lra_sfa.kernels.sfa_decode import cache_key_range, pack_k_cache, sfa_decode
    assert all(callable(f) for f in (cache_key_range, pack_k_cache, sfa_decode))


def test_importing_the_package_does_not_import_triton():
    code = ("import sys, lra_sfa, lra_sfa.kernels, lra_sfa.kernels.wide, lra_sfa.sfa; "
            "print('triton' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_kernel_benchmark_points_explore_at_the_lab(monkeypatch, tmp_path):
    pytest.importorskip("triton")
    from lra_sfa.bench.kernels import main

    for argv in (["--mode", "explore", "--sections", "decode"], ["mode=explore", f"hydra.run.dir={tmp_path}"]):
        monkeypatch.setattr(sys, "argv", ["python -m lra_sfa.bench.kernels", *argv])
        with pytest.raises(SystemExit, match="python -m lab.kernel_explore"):
            main()
