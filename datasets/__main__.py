"""`python -m datasets export ...`: prompt logs -> fine-tuning datasets."""

from __future__ import annotations

import sys

from datasets.export import main

if __name__ == "__main__":
    sys.exit(main())
