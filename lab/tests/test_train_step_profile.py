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
    for flash_sfa in ("_dq_kernel", "_dkdv_kernel", "_delta_kernel", "_topk_pack_keys_kernel", "_flash_sfa_fwd_kernel"):
        assert category(flash_sfa) == "attention"
    assert category("triton_per_fused__to_copy_add_native_layer_norm_backward_13") == "fused elementwise"
    assert category("void at::native::elementwise_kernel<128, 4, direct_copy_kernel_cuda>") == "copy"


def test_recategorize_rederives_the_categories_and_their_sums(tmp_path):
    from lab.train_step_profile import KERNEL_FIELDS, SUMMARY_FIELDS, _append

    rows = [{"experiment": "e", "attn": "sfa", "category": "other", "name": name, "launches_per_step": 4,
             "us_per_step": us} for name, us in (("_dq_kernel", 100.0), ("_dkdv_kernel", 50.0), ("aten::foo", 7.0))]
    _append(tmp_path / "kernels.csv", KERNEL_FIELDS, rows)
    _append(tmp_path / "summary.csv", SUMMARY_FIELDS, [{"experiment": "e", "attn": "sfa", "attention_us": 0,
                                                         "other_us": 157.0, "step_wall_us": 200.0}])
    main(["--out", str(tmp_path), "--recategorize"])
    (summary,) = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert (summary["attention_us"], summary["other_us"], summary["step_wall_us"]) == ("150.0", "7.0", "200.0")
    assert [row["category"] for row in csv.DictReader((tmp_path / "kernels.csv").open())] == [
        "attention", "attention", "other"]


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
