"""``python -m imagedsl``."""

from __future__ import annotations

import sys

from imagedsl._client import main

sys.exit(main())
