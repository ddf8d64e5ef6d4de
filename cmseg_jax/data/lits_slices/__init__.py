"""TFDS dataset ``lits_slices``: the thesis' LiTS slice set, built once, read without TensorFlow.

The builder lives in :mod:`.lits_slices_dataset_builder` (TFDS' folder layout, so
``tfds build cmseg_jax/data/lits_slices`` finds it); the sweep reads it through
:mod:`cmseg_jax.data.tfds_source`.
"""
