# The published ledger: Gundlach, Fogelson, Lynch, Trisovic, Rosenfeld, Sandhu, Thompson (2025), "On the Origin
# of Algorithmic Progress in AI", arXiv:2511.21622. Their figures, as facts (point values: the paper's
# accounting gives none of them an interval). `python progress.py configs/ledger/gundlach2025.py` reproduces
# their headline for 2012 -> 2023: about 6,930x in all, the Transformer about 700x, the Chinchilla
# rebalancing about 3.7x, about 89% of the log total scale-dependent.
title = "Gundlach et al. 2025"
source = "Gundlach et al. 2025, On the Origin of Algorithmic Progress in AI (arXiv:2511.21622)"
compute = {2013: 1e16}      # frontier training compute, FLOPs
compute_growth = 4.1        # per year
period = (2012, 2023)

# Compute-optimal frontier laws L(C) = a C^b, C in FLOPs (their scaling experiments)
_lstm = frontier(36.3, 0.065)
_transformer_2017 = frontier(81.7, 0.091)
_modern_transformer = frontier(88.0, 0.094)  # fitted in the paper; its accounting uses the ablations for 2017 -> modern
# Chinchilla's law (Hoffmann et al. 2022) and Kaplan et al.'s allocation N = k C^0.73, D = C / 6N
_chinchilla = chinchilla(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
_rebalancing = rebalancing(_chinchilla, k=3.6332e-6, exponent=0.73)

innovations = [
    # 2017 models were Kaplan-allocated, so the law gain is divided by R(C), which counts in 2022
    innovation("LSTM -> Transformer", 2017, ratio(law_gain(_transformer_2017, _lstm), _rebalancing)),
    # sinusoidal -> rotary (1.44) over learned -> rotary (1.26)
    innovation("sinusoidal -> learned positions", 2018, 1.44 / 1.26),
    innovation("inverse-sqrt -> cosine schedule", 2018, 1.04),
    innovation("post -> pre-norm", 2019, 1.87),
    innovation("LayerNorm -> RMSNorm", 2020, 1.09),
    innovation("learned -> rotary positions", 2021, 1.26),
    innovation("mixture of experts", 2021, 2.0),  # a literature estimate, not an ablation: not normalized
    innovation("Kaplan -> Chinchilla rebalancing", 2022, _rebalancing),
    # in their ablations and the normalization, but their ledger gives it no year: never counted
    innovation("GELU -> SwiGLU", None, 1.17),
]
# each ablation was measured alone and the whole modern stack at once (1.33): the six are scaled by one
# exponent so that their product is the joint gain
normalize = normalized(["sinusoidal -> learned positions", "inverse-sqrt -> cosine schedule", "post -> pre-norm",
                        "LayerNorm -> RMSNorm", "learned -> rotary positions", "GELU -> SwiGLU"], 1.33)
sensitivity = "LSTM -> Transformer"
