"""`python -m auth ...`: only the command's name. The tools need auth/ and providers/ together, so
they live one floor up in cli/ (auth/ itself never imports providers/ or addons/)."""

from __future__ import annotations

from cli.accounts import main

if __name__ == "__main__":
    raise SystemExit(main())
