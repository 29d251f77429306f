"""The ML half of paris-node: data, clustering, the video diffusion expert, training, sampling.

Imports `protocol` only; no networking lives here.
"""
