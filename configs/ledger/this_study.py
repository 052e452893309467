# Our ledger: the published one (gundlach2025.py, same innovations, years and conventions) fed by this
# toolkit's own measurements, to read beside it. It reads the study's JSON (README "Results"):
#     python analyze.py results/study_ablations --baseline modern --json docs/study/analyze.json
#     python analyze.py results/study_schedules --baseline modern_cosine --json docs/study/schedules.json
#     python fit_scaling.py results/study_scaling --extrapolate 1e18 --json docs/study/fit_scaling.json
#     python fit_scaling.py results/study_scaling --irreducible 1e-6 --no_approach3 --json docs/study/fit_scaling_e0.json
# and stops with one line naming the missing file until they exist. The ablations are read at width 128, the
# widest the study ran them (README "Results": which gains change with width). What the study does not
# measure keeps the published figure and says so here: the compute timeline, Kaplan's allocation N = k C^0.73,
# mixture of experts. The frontier laws are read as the paper writes them, pure power laws L = a C^-b (E fixed
# at 1e-6, i.e. 0): with E free our LSTM law floors at 1.36 nats, which the Transformers pass near 1e13 FLOPs,
# and every gain over it is unreachable at the frontier (README "Results"). Our laws come from CPU-sized models
# (3e10-3e13 FLOPs): at the 2023 frontier they are extrapolated by 9 orders of magnitude, which is the point of
# the comparison (vs_compute.png shows smaller C).
import os

_study = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "study")
_analyze = os.path.relpath(os.path.join(_study, "analyze.json"))
_fits = os.path.relpath(os.path.join(_study, "fit_scaling.json"))
_power_laws = os.path.relpath(os.path.join(_study, "fit_scaling_e0.json"))
_schedules = os.path.relpath(os.path.join(_study, "schedules.json"))
_width = 128  # the ablations' widest width

title = "this study"
source = "this toolkit's study: " + ", ".join([_analyze, _schedules, _fits, _power_laws])
compute = {2013: 1e16}      # published (Gundlach et al. 2025)
compute_growth = 4.1
period = (2012, 2023)

_lstm = frontier_fitted(_power_laws, "lstm")
_transformer_2017 = frontier_fitted(_power_laws, "retro_2017")
_chinchilla = chinchilla_fitted(_fits, "modern")           # approach 3 of the modern Transformer
_rebalancing = rebalancing(_chinchilla, k=3.6332e-6, exponent=0.73)  # Kaplan's allocation (published)


def _ablation(label):  # modern over the modern stack without one innovation: that innovation's gain
    return measured(_analyze, label, baseline="modern", study="study_ablations", width=_width)


innovations = [
    innovation("LSTM -> Transformer", 2017, ratio(law_gain(_transformer_2017, _lstm), _rebalancing)),
    # (modern over sinusoidal) / (modern over learned) = learned over sinusoidal
    innovation("sinusoidal -> learned positions", 2018,
               ratio(_ablation("modern_minus_rope_sinusoidal"), _ablation("modern_minus_rope"))),
    # a schedule is measured in runs of its own at three budgets, widths 32 and 64 (the ablations train with WSD)
    innovation("inverse-sqrt -> cosine schedule", 2018,
               measured(_schedules, "modern_minus_cosine", baseline="modern_cosine", study="study_schedules",
                        width=64)),
    innovation("post -> pre-norm", 2019, _ablation("modern_minus_prenorm")),
    innovation("LayerNorm -> RMSNorm", 2020, _ablation("modern_minus_rmsnorm")),
    innovation("learned -> rotary positions", 2021, _ablation("modern_minus_rope")),
    innovation("mixture of experts", 2021, 2.0),  # not measured here: the published literature estimate
    innovation("Kaplan -> Chinchilla rebalancing", 2022, _rebalancing),
    innovation("GELU -> SwiGLU", None, _ablation("modern_minus_swiglu")),
]
# the joint gain: modern over the 2017 stack, both trained with WSD here (so the schedule is not in it), which
# also differs in init, optimizer, biases and ReLU (README "Results")
normalize = normalized(["sinusoidal -> learned positions", "post -> pre-norm", "LayerNorm -> RMSNorm",
                        "learned -> rotary positions", "GELU -> SwiGLU"],
                       measured(_analyze, "retro_2017", baseline="modern", study="study_ablations", width=_width))
sensitivity = "LSTM -> Transformer"
