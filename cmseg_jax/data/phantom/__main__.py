"""``python -m cmseg_jax.data.phantom``: see :func:`cmseg_jax.data.phantom.main`."""

import sys

from cmseg_jax.data.phantom import main

sys.exit(main())
