# The grokking template with the layer-wise-LR study's absolute learning rates per group: embeddings 1e-4,
# lower block 1e-3, upper block + final norm + head 1e-2 (layer_lr_mults = these / learning_rate).
include('template.py')
label = 'grok_lr_1e-4_1e-3_1e-2'
_lrs = [1e-4, 1e-3, 1e-2]  # embeddings, lower block, upper block + head
learning_rate = _lrs[1]
layer_lr_mults = [lr / learning_rate for lr in _lrs]
