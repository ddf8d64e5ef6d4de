"""Data layer: LiTS NIfTI loading and sampling (``lits``) and the embedded CT phantom (``phantom``).

Submodules are imported explicitly (``from cmseg_jax.data import lits``), which keeps importing
the package cheap.
"""
