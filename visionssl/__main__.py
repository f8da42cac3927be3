"""``python -m visionssl`` (also what ``torchrun -m visionssl`` runs)."""

import sys

from visionssl.cli import main

sys.exit(main())
