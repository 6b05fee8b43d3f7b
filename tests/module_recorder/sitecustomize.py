"""Records which source files a Python process loaded, for tests/test_pipeline.py's deps check.

On PYTHONPATH with PIXELNET_MODULE_LOG=DIR set, every Python process writes
DIR/<pid>.json at exit: {"argv": sys.argv, "files": the __file__ of every module
in sys.modules}.  sys.modules at exit holds every import the process made,
lazy ones included.
"""

import atexit
import json
import os
import sys


def _dump() -> None:
    files = sorted({f for m in list(sys.modules.values()) if isinstance(f := getattr(m, "__file__", None), str)})
    with open(os.path.join(os.environ["PIXELNET_MODULE_LOG"], f"{os.getpid()}.json"), "w") as out:
        json.dump({"argv": sys.argv, "files": files}, out)


if os.environ.get("PIXELNET_MODULE_LOG"):
    atexit.register(_dump)
