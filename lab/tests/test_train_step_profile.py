"""lab.train_step_profile: kernel names sort into the model's parts; a real CPU run profiles its steps."""

from __future__ import annotations

import csv

from lab.train_step_profile import category, main


def test_kernel_names_fall_into_the_models_parts():
    assert category("flash_fwd_splitkv_kernel") == "attention"
    assert category("cudnn_generated_fort_native_sdpa_sm90_flash_fprop") == "attention"
    assert category("nvjet_tst_128x64_64x4_1x2_h_bz_TNT") == "matmul"
    assert category("aten::mm") == "matmul"
    assert category("triton_per_fused_native_layer_norm_0") == "fused elementwise"
    assert category("void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor>") == "optimizer"
    assert category("Memcpy HtoD (Pageable -> Device)") == "copy"
    assert category("aten::bernoulli_") == "other"
    assert category("softmax_warp_forward") == "attention" and category("aten::_log_softmax") == "other"


def test_a_cpu_run_profiles_its_steps(tmp_path):
    main(["--out", str(tmp_path), "--warmup", "2", "--steps", "3", "experiment=listops_reduced", "attn=full",
          "trainer.batch_size=8", "task.num_train=200", "task.num_val=32", "task.num_test=32"])
    (summary,) = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert summary["attn"] == "full" and summary["device"] == "cpu" and summary["steps_profiled"] == "3"
    assert 0 < float(summary["kernel_us_per_step"]) and 0 < float(summary["busy"]) <= 1.5
    kernels = list(csv.DictReader((tmp_path / "kernels.csv").open()))
    assert any(row["category"] == "matmul" for row in kernels)
    assert sum(float(row["us_per_step"]) for row in kernels) > 0
    assert (tmp_path / "records").is_dir()  # the run wrote its record there, not into results/runs
