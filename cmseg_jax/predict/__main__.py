"""``python -m cmseg_jax.predict``."""

import sys

from cmseg_jax.predict.cli import main

if __name__ == "__main__":
    sys.exit(main())
