"""``python -m cmseg_jax.report``: see :mod:`cmseg_jax.report.cli`."""

import sys

from cmseg_jax.report.cli import main

sys.exit(main())
