"""What the bench runs against each target, and the numbers it keeps.

CPU per request / per event is the target process's utime+stime delta (/proc/<pid>/stat) over the
whole job divided by the completed requests / upstream events; the load generator runs in another
process on another core, so it never counts. Every job is bounded by duration, request budget and
per-request timeout (see bench/load.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import payloads
from bench.procs import Launcher, LoadClient, Proc

JSON_CONCURRENCY = (1, 16, 64)
# (label, events per stream, pace ms, concurrent streams)
STREAMS = (
    ("50 ev unpaced", 50, 0, 1),
    ("50 ev unpaced", 50, 0, 64),
    ("100 ev @20ms", 100, 20, 64),
)
SCALE_STREAM_EVENTS = 50  # the scale run's streams: unpaced, like the c=64 stream row of the main run
SLOW_STREAMS = 1000
SLOW_EVENTS, SLOW_PACE_MS = 20, 400  # 8 s per stream: all 1,000 are open at once for several seconds
SLOW_RAMP_S = 2.0  # the 1,000 connections are opened over this long (a SYN burst would hit the backlog)
ROUNDS = 3


@dataclass(frozen=True)
class Durations:
    json_s: float
    stream_s: float
    paced_s: float
    warmup_s: float
    round_s: float
    scale_s: float

    passes: int

    @classmethod
    def full(cls) -> Durations:
        return cls(json_s=2.0, stream_s=2.0, paced_s=3.0, warmup_s=0.5, round_s=2.0, scale_s=4.0, passes=2)

    @classmethod
    def quick(cls) -> Durations:
        return cls(json_s=1.5, stream_s=1.5, paced_s=2.5, warmup_s=0.4, round_s=1.0, scale_s=2.0, passes=1)

    def describe(self) -> str:
        return (
            f"{self.passes} pass{'es' if self.passes > 1 else ''} over every target (each row: the pass with the "
            "least proxy CPU per unit); "
            f"JSON {self.json_s:g} s per concurrency level, unpaced streams {self.stream_s:g} s, "
            f"paced streams {self.paced_s:g} s of new streams (+ the 2 s tail), "
            f"warm-up {self.warmup_s:g} s per target, "
            f"{SLOW_STREAMS} slow streams of {SLOW_EVENTS} events at {SLOW_PACE_MS} ms, "
            f"{ROUNDS} repeated rounds of {self.round_s:g} s JSON + {self.round_s:g} s streams, "
            f"scale runs {self.scale_s:g} s"
        )


@dataclass
class Target:
    name: str
    port: int
    client: str  # client dialect
    provider: str | None  # /<provider>/ path prefix (gateway targets)
    proc: Proc | None  # the process whose CPU is counted (None: direct to the fake)
    # Where streams go, when another process relays them (the floor: bare mitmdump buffers bodies).
    stream_port: int | None = None
    stream_proc: Proc | None = None

    def for_streams(self) -> Target:
        if self.stream_port is None:
            return self
        return Target(self.name, self.stream_port, self.client, self.provider, self.stream_proc)

    def request(self, *, stream: bool, n: int = 0, pace_ms: int = 0) -> str:
        body = payloads.client_body(self.client, stream=stream, n=n, pace_ms=pace_ms)
        return payloads.http_request(payloads.client_path(self.client, self.provider), body).decode("latin-1")


@dataclass
class JsonResult:
    target: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_req: float | None
    ok: int
    errors: int
    first_error: str


@dataclass
class StreamResult:
    target: str
    label: str
    concurrency: int
    streams_per_s: float
    ttfe_p50_ms: float
    ttfe_p99_ms: float
    cpu_us_per_event: float | None
    ok: int
    errors: int
    first_error: str
    connections_per_stream: float = 0.0


@dataclass
class MemoryResult:
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ScaleResult:
    rows: list[dict[str, Any]] = field(default_factory=list)  # JSON, c=64
    stream_rows: list[dict[str, Any]] = field(default_factory=list)  # SCALE_STREAM_EVENTS unpaced, c=64
    note: str = ""


@dataclass
class Results:
    """One row per (target, scenario). Each scenario runs once per pass; a row keeps the pass that
    cost the proxy the least CPU per unit (the machine may be shared: a burst of someone else's work
    inflates one pass, never makes one cheaper), and counts the errors of every pass."""

    json: list[JsonResult] = field(default_factory=list)
    streams: list[StreamResult] = field(default_factory=list)

    def add_json(self, r: JsonResult) -> None:
        _keep_best(self.json, r, lambda x: (x.target, x.concurrency), lambda x: x.cpu_ms_per_req)

    def add_stream(self, r: StreamResult) -> None:
        _keep_best(self.streams, r, lambda x: (x.target, x.label, x.concurrency), lambda x: x.cpu_us_per_event)


def _keep_best(rows: list, new: Any, key: Any, cost: Any) -> None:
    for i, old in enumerate(rows):
        if key(old) != key(new):
            continue
        errors = old.errors + new.errors
        first_error = old.first_error or new.first_error
        if cost(new) is not None and (cost(old) is None or cost(new) < cost(old)):
            rows[i] = new
        elif cost(new) is None and cost(old) is None and getattr(new, "ok", 0) > getattr(old, "ok", 0):
            rows[i] = new
        rows[i].errors, rows[i].first_error = errors, first_error
        return
    rows.append(new)


class _PeakRss:
    """Polls a process's RSS in a thread while a job runs and keeps the highest value."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.rss())
            except OSError:
                return
            self._stop.wait(0.1)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


class Runner:
    def __init__(self, load: LoadClient, durations: Durations, profile_dir: Path | None = None) -> None:
        self.load = load
        self.d = durations
        self.results = Results()
        self.profile_dir = profile_dir

    # -- helpers -------------------------------------------------------------------------------

    def _job(self, t: Target, request: str, concurrency: int, duration: float, **extra: Any) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": t.port,
            "request": request,
            "concurrency": concurrency,
            "duration": duration,
            "timeout": 30.0,
            "max_requests": 500_000,
            **extra,
        }

    def _measured(self, t: Target, job: dict[str, Any], profile_name: str | None = None) -> tuple[dict, float | None]:
        spy = self._start_profile(t, profile_name)
        cpu0 = t.proc.cpu() if t.proc else None
        res = self.load.run(job)
        cpu = t.proc.cpu() - cpu0 if t.proc and cpu0 is not None else None
        self._stop_profile(spy)
        return res, cpu

    def _start_profile(self, t: Target, name: str | None) -> subprocess.Popen | None:
        if self.profile_dir is None or name is None or t.proc is None or not t.name.startswith("gw"):
            return None
        exe = shutil.which("py-spy") or str(Path(os.sys.executable).parent / "py-spy")
        if not Path(exe).exists():
            return None
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() else "_" for c in f"{t.name}_{name}")
        out = self.profile_dir / f"{safe}.txt"
        spy = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(t.proc.pid),
                "--rate",
                "250",
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.3)
        return spy

    @staticmethod
    def _stop_profile(spy: subprocess.Popen | None) -> None:
        if spy is None:
            return
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(timeout=20)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(timeout=5)

    # -- JSON ----------------------------------------------------------------------------------

    def json_runs(self, t: Target) -> None:
        request = t.request(stream=False)
        self.load.run(self._job(t, request, 4, self.d.warmup_s))
        for c in JSON_CONCURRENCY:
            res, cpu = self._measured(t, self._job(t, request, c, self.d.json_s), f"json_c{c}" if c == 16 else None)
            ok = res["ok"]
            self.results.add_json(
                JsonResult(
                    t.name, c, res["rps"], res["p50_ms"], res["p99_ms"],
                    cpu * 1000 / ok if cpu is not None and ok else None, ok, res["errors"], res["first_error"],
                )
            )  # fmt: skip
            _line(
                f"  json c={c}: {res['rps']:.0f} req/s p50 {res['p50_ms']:.2f} ms p99 {res['p99_ms']:.2f} ms"
                + (f" cpu {cpu * 1000 / ok:.3f} ms/req" if cpu is not None and ok else "")
                + (f" errors {res['errors']} ({res['first_error'][:160]})" if res["errors"] else "")
            )

    # -- streams -------------------------------------------------------------------------------

    def stream_runs(self, t: Target) -> None:
        t = t.for_streams()
        self.load.run(self._job(t, t.request(stream=True, n=50), 4, self.d.warmup_s))
        for label, n, pace, c in STREAMS:
            duration = self.d.paced_s if pace else self.d.stream_s
            stagger = n * pace / 1000.0
            job = self._job(t, t.request(stream=True, n=n, pace_ms=pace), c, duration, stagger=stagger)
            res, cpu = self._measured(t, job, f"stream_{n}_{pace}_c{c}" if c > 1 else None)
            ok = res["ok"]
            per_event = cpu * 1e6 / (ok * n) if cpu is not None and ok else None
            self.results.add_stream(
                StreamResult(
                    t.name, label, c, res["rps"], res["ttfb_p50_ms"], res["ttfb_p99_ms"], per_event, ok,
                    res["errors"], res["first_error"], res["connects"] / ok if ok else 0.0,
                )
            )  # fmt: skip
            _line(
                f"  {label} c={c}: {res['rps']:.1f} streams/s TTFE p50 {res['ttfb_p50_ms']:.2f} ms "
                f"p99 {res['ttfb_p99_ms']:.2f} ms"
                + (f" cpu {per_event:.1f} us/event" if per_event is not None else "")
                + (f" errors {res['errors']} ({res['first_error'][:160]})" if res["errors"] else "")
            )

    # -- memory --------------------------------------------------------------------------------

    def memory(
        self,
        floor: Target | None,
        translated: Target | None,
        *,
        rss_start: dict[str, float],
        rss_after: dict[str, float],
    ) -> MemoryResult:
        result = MemoryResult()
        for t in (floor, translated):
            if t is None or t.proc is None:
                continue
            t = t.for_streams()  # the floor's memory is the streaming relay's
            assert t.proc is not None
            row: dict[str, Any] = {
                "target": t.name,
                "start": rss_start.get(t.proc.name),
                "after_runs": rss_after.get(t.proc.name),
            }
            rounds = []
            for _ in range(ROUNDS):
                self.load.run(self._job(t, t.request(stream=False), 64, self.d.round_s))
                self.load.run(self._job(t, t.request(stream=True, n=50), 64, self.d.round_s))
                rounds.append(t.proc.rss())
            row["rounds"] = rounds
            request = t.request(stream=True, n=SLOW_EVENTS, pace_ms=SLOW_PACE_MS)
            job = self._job(
                t,
                request,
                SLOW_STREAMS,
                SLOW_RAMP_S + 1.0,
                once=True,
                ramp=SLOW_RAMP_S,
                notify_first=True,
                max_requests=SLOW_STREAMS,
            )
            with _PeakRss(t.proc) as peak:
                self.load.start(job)
                at_first = None
                while True:
                    msg = self.load.read()
                    if "progress" in msg:
                        at_first = t.proc.rss()
                        row["open_note"] = msg["progress"] + (
                            f" ({msg.get('waiting')} not started)" if msg.get("waiting") else ""
                        )
                    if "result" in msg:
                        res = msg["result"]
                        break
            row["streams_open"] = at_first
            row["streams_peak"] = peak.peak
            row["streams_ok"] = res["ok"]
            row["streams_errors"] = res["errors"]
            row["streams_first_error"] = res["first_error"]
            time.sleep(0.5)
            row["after_streams"] = t.proc.rss()
            result.rows.append(row)
            _line(
                f"  {t.name}: start {row['start']:.0f} MB, after runs {row['after_runs']:.0f} MB, rounds "
                + ", ".join(f"{r:.0f}" for r in rounds)
                + f" MB, {SLOW_STREAMS} streams open {at_first or float('nan'):.0f} MB (peak {peak.peak:.0f} MB, "
                f"{res['ok']} ok, {res['errors']} errors), after {row['after_streams']:.0f} MB"
            )
        return result

    # -- scale ---------------------------------------------------------------------------------

    def scale(self, launcher: Launcher, config: dict[str, Any], repo: Path) -> ScaleResult:
        """1 and 2 gateway processes behind HAProxy (TCP mode, round-robin), nothing pinned: JSON and
        unpaced streams at c=64 for each setup."""
        result = ScaleResult()
        everything = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        if everything:
            for p in (self.load.proc.pid, *(p.pid for p in launcher.procs if p.name == "fake")):
                try:
                    os.sched_setaffinity(p, everything)
                except OSError:
                    pass
        gateways = [launcher.gateway("scale-gw1", config, None, repo=repo)]
        direct = Target("gateway direct", gateways[0].port, "openai_chat", "claude-custom", gateways[0])
        self._scale_row(result, "1 process, no HAProxy", direct, gateways)
        self._scale_stream_row(result, "1 process, no HAProxy", direct, gateways)
        for n in (1, 2):
            if len(gateways) < n:
                gateways.append(launcher.gateway(f"scale-gw{n}", config, None, repo=repo))
            lb = launcher.haproxy([g.port for g in gateways])
            t = Target(f"HAProxy + {n}", lb.port, "openai_chat", "claude-custom", None)
            label = f"{n} process{'es' if n > 1 else ''} behind HAProxy"
            self._scale_row(result, label, t, gateways, lb)
            self._scale_stream_row(result, label, t, gateways, lb)
            launcher.stop(lb)
        for g in gateways:
            launcher.stop(g)
        self._scale_redis(result, launcher, config, repo)
        for rows in (result.rows, result.stream_rows):
            base = next((r for r in rows if r["label"].startswith("1 process behind")), None)
            for r in rows:
                r["scaling"] = r["rps"] / base["rps"] if base and base["rps"] else None
        return result

    def _scale_redis(self, result: ScaleResult, launcher: Launcher, config: dict[str, Any], repo: Path) -> None:
        """The same with `state: {backend: redis}`: 1 process direct (its CPU per request next to the
        local backend's) and 2 processes + Redis behind HAProxy."""
        if shutil.which("redis-server") is None:
            result.note = "Redis rows skipped: redis-server is not installed (apt-get install redis-server)."
            return
        redis = launcher.redis()
        shared = {**config, "state": {"backend": "redis", "redis_url": f"redis://127.0.0.1:{redis.port}/0"}}
        gateways = [launcher.gateway("scale-redis-gw1", shared, None, repo=repo)]
        direct = Target("gateway direct (redis)", gateways[0].port, "openai_chat", "claude-custom", gateways[0])
        self._scale_row(result, "1 process + Redis, no HAProxy", direct, gateways)
        gateways.append(launcher.gateway("scale-redis-gw2", shared, None, repo=repo))
        lb = launcher.haproxy([g.port for g in gateways])
        t = Target("HAProxy + 2 (redis)", lb.port, "openai_chat", "claude-custom", None)
        self._scale_row(result, "2 processes + Redis behind HAProxy", t, gateways, lb)
        launcher.stop(lb)
        for g in gateways:
            launcher.stop(g)
        launcher.stop(redis)
        local = next((r for r in result.rows if r["label"] == "1 process, no HAProxy"), None)
        with_redis = next((r for r in result.rows if r["label"] == "1 process + Redis, no HAProxy"), None)
        if local and with_redis and local["gw_cpu_ms_per_req"] and with_redis["gw_cpu_ms_per_req"]:
            delta = with_redis["gw_cpu_ms_per_req"] - local["gw_cpu_ms_per_req"]
            result.note = (
                f"Redis backend: {delta:+.3f} ms gateway CPU per request next to local "
                f"({with_redis['gw_cpu_ms_per_req']:.3f} vs {local['gw_cpu_ms_per_req']:.3f}; goal <= +0.1)."
            )

    def _scale_measure(
        self, t: Target, request: str, gateways: list[Proc], lb: Proc | None
    ) -> tuple[dict[str, Any], float, float]:
        """A warm-up, then one c=64 run: the load generator's result and the CPU seconds the gateway
        processes (summed) and the load balancer spent on it. Nothing is pinned here and the load
        generator shares the cores, so the gateways' own CPU is what compares across setups."""
        self.load.run(self._job(t, request, 16, self.d.warmup_s))
        cpu0 = [g.cpu() for g in gateways]
        lb0 = lb.cpu() if lb else 0.0
        res = self.load.run(self._job(t, request, 64, self.d.scale_s))
        cpu = sum(g.cpu() - c for g, c in zip(gateways, cpu0, strict=True))
        lb_cpu = (lb.cpu() - lb0) if lb else 0.0
        return res, cpu, lb_cpu

    def _scale_row(
        self, result: ScaleResult, label: str, t: Target, gateways: list[Proc], lb: Proc | None = None
    ) -> None:
        res, cpu, lb_cpu = self._scale_measure(t, t.request(stream=False), gateways, lb)
        ok = res["ok"]
        result.rows.append(
            {
                "label": label,
                "rps": res["rps"],
                "p50_ms": res["p50_ms"],
                "p99_ms": res["p99_ms"],
                "gw_cpu_ms_per_req": cpu * 1000 / ok if ok else None,
                "gw_cores_busy": cpu / res["elapsed"] if res["elapsed"] else None,
                "lb_cpu_ms_per_req": lb_cpu * 1000 / ok if ok and lb else None,
                "errors": res["errors"],
                "first_error": res["first_error"],
            }
        )
        _line(
            f"  {label}: {res['rps']:.0f} req/s p50 {res['p50_ms']:.2f} ms p99 {res['p99_ms']:.2f} ms"
            + (f" errors {res['errors']} ({res['first_error'][:160]})" if res["errors"] else "")
        )

    def _scale_stream_row(
        self, result: ScaleResult, label: str, t: Target, gateways: list[Proc], lb: Proc | None = None
    ) -> None:
        """The same setup with unpaced streams: streams/s, and the gateways' CPU per event."""
        n = SCALE_STREAM_EVENTS
        res, cpu, lb_cpu = self._scale_measure(t, t.request(stream=True, n=n), gateways, lb)
        events = res["ok"] * n
        row = {
            "label": label,
            "rps": res["rps"],
            "ttfe_p50_ms": res["ttfb_p50_ms"],
            "gw_cpu_us_per_event": cpu * 1e6 / events if events else None,
            "gw_cores_busy": cpu / res["elapsed"] if res["elapsed"] else None,
            "lb_cpu_us_per_event": lb_cpu * 1e6 / events if events and lb else None,
            "errors": res["errors"],
            "first_error": res["first_error"],
        }
        result.stream_rows.append(row)
        _line(
            f"  {label}, streams: {res['rps']:.1f} streams/s TTFE p50 {res['ttfb_p50_ms']:.2f} ms"
            + (f" gateway cpu {row['gw_cpu_us_per_event']:.1f} us/event" if events else "")
            + (f" errors {res['errors']} ({res['first_error'][:160]})" if res["errors"] else "")
        )


def _line(text: str) -> None:
    print(text, flush=True)
