# The GPT-2 baseline with rotary positions at width 64 (a one-file ablation; see configs/ablations/ for
# the modern stack with one innovation reverted at a time).
include('widths/64d.py')
label = 'rope'
pos_encoding = 'rotary'
