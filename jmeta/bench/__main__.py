"""``python -m jmeta.bench``: the same as ``jmeta bench``."""

import sys

from jmeta.bench._main import main

sys.exit(main())
