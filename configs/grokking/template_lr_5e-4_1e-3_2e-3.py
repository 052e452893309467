# The grokking template with the layer-wise-LR study's absolute learning rates per group: embeddings 5e-4,
# lower block 1e-3, upper block + final norm + head 2e-3 (layer_lr_mults = these / learning_rate).
include('template.py')
label = 'grok_lr_5e-4_1e-3_2e-3'
_lrs = [5e-4, 1e-3, 2e-3]  # embeddings, lower block, upper block + head
learning_rate = _lrs[1]
layer_lr_mults = [lr / learning_rate for lr in _lrs]
