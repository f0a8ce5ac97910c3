"""All benchmarks: `python -m bench [--quick]` runs the fan-out suite, then the publish benchmark."""

from __future__ import annotations

import sys

from . import fanout, publish

if __name__ == "__main__":
    fanout.main(sys.argv[1:])
    publish.main(["--quick"] if "--quick" in sys.argv[1:] else [])
