"""The GPU benchmark scripts run end to end at tiny width on the CPU (so they don't rot between GPU
sessions) and record what they measure: compiled variants agree with eager."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(task: str, out: Path, *args: str) -> dict:
    """``python -m benchmarks TASK --tiny``: the one driver, as on the GPU machine."""
    subprocess.run([sys.executable, "-m", "benchmarks", task, "--tiny", "--out", str(out), *args],
                   check=True, capture_output=True, text=True, timeout=900, cwd=ROOT)
    return json.loads(out.read_text())


def test_flux_step_records_eager_and_aoti(tmp_path):
    result = _run("flux-step", tmp_path / "flux.json", "--double", "1", "--single", "1", "--variants", "eager,aoti,nonsense", "--iters", "3")
    variants = result["variants"]
    assert variants["eager"]["median_ms"] > 0 and variants["aoti"]["median_ms"] > 0
    assert variants["aoti"]["runtime"] == "aoti" and variants["aoti"]["rel_error_vs_eager"] < 1e-4
    assert "_scaled_dot_product_flash_attention_for_cpu" in variants["aoti"]["graph_kernels"]
    assert variants["nonsense"]["error"].startswith("ValueError: unknown variant")  # recorded, the run went on
    assert result["flops"]["total_tflop"] > 0 and result["total_s"] > 0


def test_the_whole_flux_image_is_timed_by_stage_compiled_and_warm_started(tmp_path):
    """A toy FLUX.1-dev written into a Hugging Face cache, found by the registry's id, served eager,
    compiled (regional), step-cached at a fixed schedule, and warm-started in a fresh process from the cache."""
    result = _run("flux-image", tmp_path / "flux_image.json", "--steps", "3", "--repeats", "1", "--variants",
                  "eager,ours,cached_40,warm", "--hf-home", str(tmp_path / "hf"), "--cache", str(tmp_path / "aoti"))
    eager, ours, cached, warm = (result["variants"][v] for v in ("eager", "ours", "cached_40", "warm"))
    assert cached["schedule"] == "fcf" and cached["cached_steps"] == 1 and cached["cached_over_full"] > 0, cached
    assert result["speedup_end_to_end_cached_40"] > 0
    assert list(eager["stages_s"]) == ["text encoding", "denoising", "VAE decode"]
    assert ours["runtime"] == "aoti" and ours["build_s"] > 0 and ours["vs_eager"]["max_pixel_diff"] <= 2
    marks = warm["marks_s"]
    assert warm["cache_hit"] and warm["runtime"] == "aoti" and 0 < marks["bound"] < marks["first_step_done"] <= marks["image"]
    assert marks["loaded"] <= marks["stage: transform"] <= marks["stage: capture"] <= marks["stage: swap in"] <= marks["bound"]
    assert result["placement"].startswith("fits one device") and result["speedup_end_to_end"] > 0


def test_step_caching_on_the_embedded_dit_records_quality_and_speed_per_level(tmp_path, cache_dir):
    """Each level draws the labels; "off" is the reference (identical to itself), the others reuse steps."""
    result = _run("step-cache", tmp_path / "step_cache.json", "--cache", str(cache_dir))
    off, fast, faster = (result["variants"][v] for v in ("off", "fast", "faster"))
    assert result["runtime"] == "aoti" and result["build"].startswith("regional")
    assert off["images"] == 4 and off["identical_to_off"] == 4 and off["steps_cached_mean"] == 0
    assert 0 < fast["steps_cached_mean"] <= faster["steps_cached_mean"]
    assert fast["drawn_recognisably"] == 4 and fast["speedup_vs_off"] > 0 and len(fast["speedup_p10_p90"]) == 2


def test_a_text_models_warm_start_is_timed_from_the_process_start(tmp_path, cache_dir):
    """The embedded text model's warm start in a fresh process, from the session's cache (the app's
    recipe: what the app server's startup builds): each mark in order, the graphs from the cache."""
    result = _run("text-start", tmp_path / "text_start.json", "--variants", "warm", "--cache", str(cache_dir),
                  "--prompt-tokens", "16", "--new-tokens", "8")
    warm = result["variants"]["warm"]
    assert warm["runtime"] == "aoti" and warm["graphs"] == 3 and not warm["fallbacks"], warm
    marks = warm["marks_s"]
    assert 0 < marks["torch_imported"] < marks["imported"] < marks["loaded"] < marks["optimized"] <= marks["first_token"]
    assert warm["decode_tokens_per_s"] > 0


def test_llm_decode_records_our_loop_eager_and_aoti(tmp_path):
    result = _run("llm-decode", tmp_path / "llm.json", "--layers", "2", "--prompt-tokens", "24", "--new-tokens", "8",
                  "--variants", "ours_eager,ours_aoti")
    eager, compiled = result["variants"]["ours_eager"], result["variants"]["ours_aoti"]
    assert eager["tokens"] == compiled["tokens"] == 8  # EOS ignored: always the asked-for length
    assert compiled["runtime"] == "aoti" and compiled["graphs"] == 2
    assert compiled["token_ids"] == eager["token_ids"]  # greedy text identical
    assert compiled["prefill_logits_rel_error_vs_eager"] < 1e-4
    assert compiled["decode_step_logits_rel_error_vs_eager"] < 1e-4
    assert len(compiled["ttft_new_lengths_ms"]) == 3 and min(compiled["ttft_new_lengths_ms"].values()) > 0


def test_compile_profile_says_where_a_build_spends_its_time(tmp_path):
    subprocess.run([sys.executable, "-m", "benchmarks", "compile-profile", "--tiny", "--out-dir", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=900, cwd=ROOT)
    phases = json.loads((tmp_path / "phases.json").read_text())
    assert phases["phases_s"]["export"] > 0 and phases["phases_s"]["aot_compile"] > phases["phases_s"]["export"]
    assert phases["total_s"] >= phases["phases_s"]["aot_compile"]
    assert "aot_compile" in (tmp_path / "profile.txt").read_text()


def test_quantized_memory_shows_no_copy_of_the_fp8_weights(tmp_path):
    result = _run("memory", tmp_path / "mem.json", "--layers", "2", "--prompt-tokens", "16", "--new-tokens", "4")
    stages = result["variants"]
    assert stages["quantized"]["old_weights_alive"] == 0
    assert stages["compiled_applied"]["runtime"] == "aoti"
    fp8_bits = [stages[s]["python_reachable_gb"]["uint8"] for s in ("quantized", "compiled_applied", "served_cuda_graphs")]
    assert fp8_bits[0] > 0 and fp8_bits == [fp8_bits[0]] * 3  # compiling and serving add no copy


def test_the_drivers_list_their_tasks_and_refuse_unknown_ones():
    from benchmarks.__main__ import TASKS
    from benchmarks.kernels.__main__ import KERNELS

    for module, names in (("benchmarks", TASKS), ("benchmarks.kernels", KERNELS)):
        listing = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, cwd=ROOT, check=True).stdout
        assert all(name in listing for name in names)
        wrong = subprocess.run([sys.executable, "-m", module, "nonsense"], capture_output=True, text=True, cwd=ROOT)
        assert wrong.returncode != 0 and "unknown name 'nonsense'" in wrong.stderr
    for module, _ in [*TASKS.values(), *KERNELS.values()]:  # every entry names a module with a main
        assert callable(__import__(module, fromlist=["main"]).main)


def test_the_load_benchmark_counts_every_outcome_and_the_server_survives(tmp_path, cache_dir):
    """A short run (4 clients, 16 s, eager at first; AOTI switched on takes the packages from the session's
    cache): every kind of request happened, none unexpected or hung."""
    out = tmp_path / "load.json"
    subprocess.run([sys.executable, "-m", "benchmarks", "load", "--clients", "4", "--seconds", "16", "--no-compile",
                    "--toggle-every", "4", "--cache", str(cache_dir), "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=600, cwd=ROOT)
    result = json.loads(out.read_text())
    assert result["totals"].get("unexpected", 0) == 0 and result["totals"].get("hung", 0) == 0, result["unexpected_examples"]
    kinds = result["per_endpoint"]
    assert kinds["bad_text"]["refused"] > 0 and kinds["text"]["answered"] > 0 and kinds["set_optimization"]["answered"] >= 2
    assert kinds["switch_to_image"]["answered"] == 1 and result["model_switches"] >= 1
    assert result["serving_after"] and result["server_after"]["threads"] > 0
