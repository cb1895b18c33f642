"""aiclient-mitm: `mitmdump -s run.py` (or `mitmweb -s run.py`) runs the gateway.

Settings come from config.yaml beside this file; `--set config=PATH` picks another.
"""

from addons import chain

addons = chain()
