"""The side panel's model cards from compile-status rows."""

import panel


def _row(**changes):
    row = {"model": "m", "state": "aoti", "reason": "compiled now", "compile_s": 84.2, "load_s": 0.01, "cache_hit": False,
           "cuda_graphs": 1, "quantization": "fp8_rowwise", "fallbacks": [], "eager_latency_s": 0.025,
           "aoti_latency_s": 0.004, "layout_copies": 0, "guard_fallbacks": 0}
    return {**row, **changes}


def _measured(eager_s=0.025, compiled_s=0.004, low=5.8, high=6.6, rounds=25):
    return {"eager_s": eager_s, "compiled_s": compiled_s, "ratio": eager_s / compiled_s, "low": low, "high": high,
            "rounds": rounds, "verdict": "faster" if low > 1 else "slower" if high < 1 else "no measurable difference"}


def test_a_compiled_model_shows_the_speedup_measured_at_load_its_spread_and_its_tags():
    html = panel.card(_row(measured=_measured()), "text")
    assert 'data-state="aoti"' in html and ">compiled</span>" in html
    assert ">6.2× faster</div>" in html and "hot module, measured at load: decode step over 25 rounds, middle half 5.80–6.60×" in html
    assert "compiled 4 ms a decode step" in html and "eager 25 ms a decode step" in html
    assert 'bar-aoti" style="width:100%"' in html and 'bar-eager" style="width:16%"' in html  # the longer bar is the faster
    assert "requests (best): compiled 250 tokens/s · eager 40 tokens/s" in html
    assert "<span>CUDA graphs</span>" in html and "<span>fp8_rowwise</span>" in html and "compiled in 84 s" in html
    image = panel.card(_row(measured=_measured(0.0384, 0.0203, 1.7, 2.0), eager_latency_s=0.0384, aoti_latency_s=0.0203,
                            cuda_graphs=0, quantization="none"), "image")
    assert "1.9× faster" in image and "compiled 20.3 ms a denoising step" in image and "CUDA graphs" not in image


def test_slower_is_said_slower_and_a_difference_inside_the_spread_is_no_difference():
    slower = panel.card(_row(measured=_measured(0.004, 0.006, 0.6, 0.7)), "text")
    assert ">1.5× slower</div>" in slower and "faster" not in slower
    assert 'bar-eager" style="width:100%"' in slower  # eager is the faster here: its bar is the longer
    same = panel.card(_row(measured=_measured(0.0040, 0.0039, 0.95, 1.08)), "text")
    assert ">no measurable difference</div>" in same and "faster" not in same and "slower" not in same
    assert panel.ratio_words(0.5) == "2× slower" and panel.ratio_words(1.03) == "no measurable difference"


def test_a_visitors_comparison_reads_the_same_in_the_card_and_the_message():
    compared = {"aoti": 0.004, "eager": 0.0277}
    line = panel.comparison(compared, "text")
    assert line == "your A/B, one request each: compiled 250 tokens/s, eager 36 tokens/s: 6.9× faster"
    assert line in panel.card(_row(compared=compared), "text")


def test_no_speed_is_shown_before_one_is_measured():
    html = panel.card(_row(eager_latency_s=None, aoti_latency_s=None), "text")
    assert "faster" not in html and "slower" not in html and "Compare with eager" not in html


def test_a_fallback_says_why_in_words_and_is_escaped():
    html = panel.card(_row(state="fallback", reason="AOTI failed, serving eager: <boom>", fallbacks=["aoti -> eager: x < y"],
                           eager_latency_s=None, aoti_latency_s=None), "text")
    assert ">fallback</span>" in html and "&lt;boom&gt;" in html and "<li>aoti -&gt; eager: x &lt; y</li>" in html
    assert "faster" not in html


def test_weights_kept_off_the_device_are_said_first():
    html = panel.card(_row(placement="text_encoder, text_encoder_2 in host memory (9.1 GiB), moved to the GPU for each "
                                     "prompt's encoding", fallbacks=["Float8Rowwise -> partly: 2 of 500 left"]), "image")
    assert html.index("text_encoder, text_encoder_2 in host memory (9.1 GiB)") < html.index("Float8Rowwise -&gt; partly")


def test_a_running_compile_shows_its_stage_its_time_so_far_and_the_last_builds_time():
    row = _row(state="compiling", reason="exporting and compiling the hot module", stage="build graph 1 of 2 (Inductor, C++)",
               started=1000.0, estimate_s=84.0, eager_latency_s=None, aoti_latency_s=None, compile_s=None)
    html = panel.card(row, "text", now=1042.0)
    assert ">compiling</span>" in html and "build graph 1 of 2 (Inductor, C++) · 42 s so far, the last such build took 84 s" in html
    assert 'class="bar bar-compiling" style="width:50%"' in html
    first = panel.card({**row, "estimate_s": None}, "text", now=1003.0)
    assert "3 s so far (no earlier build to estimate from)" in first and "bar-compiling" not in first
    assert 'style="width:100%"' in panel.card(row, "text", now=2000.0)  # past the estimate: full, never beyond


def test_only_loaded_models_get_a_card():
    html = panel.cards([_row(model="a"), _row(model="b", state="not loaded")], {"a": "text", "b": "image"})
    assert 'data-model="a"' in html and 'data-model="b"' not in html
    assert panel.cards([], {}) == "<div>No model loaded yet.</div>"
