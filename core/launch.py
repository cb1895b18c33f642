"""Makes `mitmdump -s run.py` / `mitmweb -s run.py` listen where config.yaml says, and nowhere else.

Why a re-exec: a script cannot choose mitmproxy's first listener. mitmproxy 12 (measured on 12.3.1,
Python 3.13) loads `-s` scripts from a deferred task, and the proxy server binds with the options it
had when `setup_servers` started: a mode set by the script in `load()`/`configure()` is ignored, and
without flags mitmproxy would open its default forward proxy on *:8080 (mitmproxy issue #4269). So
when run.py is imported by a mitmproxy whose listener options are still at their defaults, this
re-executes the same command line with `--mode reverse:…@PORT --listen-host HOST` from the
configuration. Measured: with default options the script is imported at `setup_servers`' first
suspension, before the default listener is bound (tests/e2e/test_startup.py watches the process's
sockets from its start), and the exec closes everything the process had. Listener flags the user gave
win; a non-reverse mode is refused here (with explicit flags mitmproxy may already have bound it for
that instant) and again by ConfigLoader.running.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from core.config import ConfigError, load_config

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"
# Reverse mode needs a target; nothing is ever sent there (every flow is answered or re-targeted),
# and a flow that slipped through would fail closed against a port nobody listens on.
PLACEHOLDER_TARGET = "http://127.0.0.1:1"
# Set in the re-executed process: a second re-exec would mean the flags did not take.
REEXEC_MARK = "AICLIENT_MITM_REEXEC"
# What mitmproxy's options are when nobody chose a listener.
DEFAULT_LISTENER = (("regular",), "", None)


def listener_flags(config_path: Path) -> list[str]:
    """The mitmproxy flags that make it listen as config.yaml says."""
    listen = load_config(config_path).listen
    return ["--mode", f"reverse:{PLACEHOLDER_TARGET}@{listen.port}", "--listen-host", listen.host]


def config_path(options) -> Path:
    """`--set config=PATH` is an option mitmproxy does not know yet while run.py is imported: it
    waits in `options.deferred` until ConfigLoader declares it."""
    value = options.deferred.get("config")
    raw = getattr(value, "val", value)  # deferred `--set` values wait as the list of strings given
    if isinstance(raw, list):
        raw = raw[-1] if raw else None
    return Path(str(raw)).expanduser() if raw else DEFAULT_CONFIG


def needs_reexec(options) -> bool:
    return (tuple(options.mode), options.listen_host, options.listen_port) == DEFAULT_LISTENER


# AICLIENT_MITM_EVENT_LOOP=asyncio keeps asyncio's own event loop (default: uvloop).
EVENT_LOOP_ENV = "AICLIENT_MITM_EVENT_LOOP"
# Runs the mitmproxy entry script given next on uvloop's event loop (see reexec_argv).
UVLOOP_BOOT = (
    "import asyncio, runpy, sys, uvloop; "
    "asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); "
    "sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def reexec_argv(orig_argv: Sequence[str], flags: Sequence[str]) -> list[str]:
    """The same command line plus the listener flags (options may follow mitmdump's positional
    filter expression, so appending is safe), run on uvloop's event loop when the command is
    `python ENTRY-SCRIPT ...` (how the mitmdump/mitmweb launchers run) and uvloop is installed.

    Why uvloop: every relayed event is a socket read, a write and a loop turn, and on asyncio's own
    loop those are most of a stream's CPU (bench/README.md); uvloop does them in C. mitmproxy creates
    its loop in `asyncio.run` before it loads scripts, so the choice can only be made here."""
    if (
        os.environ.get(EVENT_LOOP_ENV, "uvloop") == "uvloop"
        and len(orig_argv) > 1
        and Path(orig_argv[1]).is_file()
        and importlib.util.find_spec("uvloop") is not None
    ):
        return [orig_argv[0], "-c", UVLOOP_BOOT, *orig_argv[1:], *flags]
    return [*orig_argv, *flags]


def ensure_listener() -> None:
    """Called when run.py is imported by mitmproxy: re-exec with the listener flags when needed."""
    from mitmproxy import ctx

    try:
        options = ctx.options
    except AttributeError:  # imported outside mitmproxy (tests, tools): nothing to do
        return
    if not needs_reexec(options):
        if any(not str(mode).startswith("reverse:") for mode in options.mode):
            # Anything but a reverse listener would be an open proxy: refuse before it exists.
            print(
                "aiclient-mitm: the gateway only runs as a reverse proxy; drop --mode or give "
                f"--mode reverse:{PLACEHOLDER_TARGET}@PORT",
                file=sys.stderr,
                flush=True,
            )
            os._exit(1)
        return
    path = config_path(options)
    try:
        flags = listener_flags(path)
    except ConfigError as e:
        # Exit before anything listens; mitmproxy would otherwise bring up its forward proxy.
        print(f"aiclient-mitm: invalid configuration {path}: {e}", file=sys.stderr, flush=True)
        os._exit(1)
    if os.environ.get(REEXEC_MARK):
        print(
            "aiclient-mitm: mitmproxy ignored the listener flags; start it with: "
            f"{shlex.join([Path(sys.orig_argv[0]).name, *sys.orig_argv[1:], *flags])}",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)
    argv = reexec_argv(sys.orig_argv, flags)
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[REEXEC_MARK] = "1"
    os.execv(sys.executable, argv)
