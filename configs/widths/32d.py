# Width 32: depth grows as width^0.5 (n_layer = round(2 * sqrt(n_embd / 64))), head size 64 (at least 2 heads).
# The LSTM keeps its own depth (configs/lstm.py sets n_layer = 2); give the width file after the preset.
n_embd = 32
n_head = 2
if arch != 'lstm':
    n_layer = 1
