# The LSTM baseline (lstm.py): 2 stacked layers at every width (the classic LM setup), tied embeddings,
# forget bias 1, AdamW with the same schedule as the Transformers, gradient clipping at 1.0.
# Compose with a width: python train.py configs/lstm.py configs/widths/256d.py
label = 'lstm'
arch = 'lstm'
n_layer = 2
tie_embeddings = True
lstm_forget_bias = 1.0
lstm_init = 'xavier'
optimizer = 'adamw'
grad_clip = 1.0
