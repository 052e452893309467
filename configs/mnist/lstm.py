# Pixel-by-pixel MNIST (14 x 14: python prepare.py mnist --size 14): an LSTM reads 196 pixel tokens and predicts
# the label token; loss and accuracy at the label position only. Early stopping on validation loss.
label = 'mnist_lstm'
dataset = 'mnist_size14'
arch = 'lstm'
n_layer = 1
n_embd = 128
tie_embeddings = True
optimizer = 'adamw'
learning_rate = 2e-3
weight_decay = 0.0
batch_size = 64
max_iters = 5000
eval_interval = 250
grad_clip = 1.0
early_stopping_patience = 4
