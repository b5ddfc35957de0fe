#!/usr/bin/env python
"""Shim with the reference design's name: same as `sagrflow check-temporal`."""

import sys

from sagrflow.tools.check_temporal import main

if __name__ == "__main__":
    sys.exit(main())
