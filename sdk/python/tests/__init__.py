"""Tests of the handoff package. They import it from ../src, so they run
from a checkout without installing anything."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
