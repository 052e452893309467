# The grokking template with the layer-wise-LR study's absolute learning rates per group: embeddings 7e-4,
# lower block 1.5e-3, upper block + final norm + head 3e-3 (layer_lr_mults = these / learning_rate).
include('template.py')
label = 'grok_lr_7e-4_1.5e-3_3e-3'
_lrs = [7e-4, 1.5e-3, 3e-3]  # embeddings, lower block, upper block + head
learning_rate = _lrs[1]
layer_lr_mults = [lr / learning_rate for lr in _lrs]
