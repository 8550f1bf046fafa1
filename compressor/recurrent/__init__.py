"""Recurrent layers (nn.GRU, nn.LSTM) as int8 models compute them.

- ``cells``: the GRU and LSTM step, written once against an ops interface that
  runs it eagerly (float or simulated int8) or writes it into an FX graph
  (the exporters' unrolled form);
- ``op``: the ``compressor::gru_scan`` / ``compressor::lstm_scan`` custom ops
  that keep a whole recurrence as one node through torch.export, so the time
  axis stays dynamic;
- ``substitute``: swaps a model's nn.GRU / nn.LSTM for an equivalent stack of
  input Linear layers and those ops, before tracing;
- ``quantized``: the simulation module quantize() puts in the op's place.
"""
