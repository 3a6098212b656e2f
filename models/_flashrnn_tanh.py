"""A tanh for FlashRNN's Triton LSTM kernels that stays finite for every input (models/lstm_flashrnn.py).

FlashRNN 1.0.8 computes tanh(x) as (1 - e^-2x) / (1 + e^-2x), which is inf / inf = NaN for x below about
-44 in fp32. Here e = e^-2|x| <= 1, so nothing overflows, and the sign is put back afterwards.
Imported only when the flashrnn_triton_fused backend is used (it needs triton).
"""
import triton
import triton.language as tl


@triton.jit
def triton_tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    r = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, r, -r)
