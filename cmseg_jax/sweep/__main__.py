"""``python -m cmseg_jax.sweep``."""

from cmseg_jax.sweep.cli import entry

if __name__ == "__main__":
    entry()
