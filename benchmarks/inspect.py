"""Benchmark: ``imagedsl inspect`` against ``dive --ci`` on the same 400 MB image (see
``_inspect_vs_dive.py`` for what is measured and how).

    python benchmarks/inspect.py [--runs N] [--work DIR]

This file shares its name with the standard library's ``inspect``, and a script's directory
comes first on ``sys.path``: any benchmark run from here (this one included) that imports
``inspect`` (attrs does) would get this file. Imported under that name, it therefore stands
in for the real module.
"""

from __future__ import annotations

import sys

if __name__ == "inspect":
    import importlib.util
    import sysconfig
    from pathlib import Path as _Path

    _spec = importlib.util.spec_from_file_location(
        "inspect", _Path(sysconfig.get_paths()["stdlib"], "inspect.py")
    )
    assert _spec is not None
    assert _spec.loader is not None
    _real = importlib.util.module_from_spec(_spec)
    sys.modules["inspect"] = _real
    _spec.loader.exec_module(_real)
elif __name__ == "__main__":
    from _inspect_vs_dive import main

    main()
