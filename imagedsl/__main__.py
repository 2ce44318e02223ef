"""``python -m imagedsl``."""

from __future__ import annotations

import sys

from imagedsl.cli import main

sys.exit(main())
