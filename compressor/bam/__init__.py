"""Binary activation maps (BAM) for speech-quality prediction (Nilsson et al.).

- ``frontend``: the numpy log-mel front-end (outside the model);
- ``surrogate``: Heaviside with the SuperSpike surrogate derivative;
- ``binarization``: binary activations / binary weights applied from outside a zoo model;
- ``data``: degraded demo clips labelled with PESQ-WB;
- ``train``: the MSE/Adam loop, MSE and Pearson correlation.
The recipe is compressor/recipes/bam.py; the bit-packed runtime runtimes/packed_binary.py.
"""
