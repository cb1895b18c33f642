"""aiclient-mitm: `mitmdump -s run.py` (or `mitmweb -s run.py`) runs the gateway.

Settings come from config.yaml beside this file; `--set config=PATH` picks another.
"""

from core.launch import ensure_listener

ensure_listener()  # before anything listens: re-executes with the configured listener flags if needed

from addons import chain  # noqa: E402

addons = chain()
