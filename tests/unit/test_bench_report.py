"""bench.report's verdicts against issue 21's goals (ratios to the floor measured in the same run)."""

from __future__ import annotations

import pytest

from bench import report
from bench.scenarios import JsonResult, MemoryResult, Results, ScaleResult, StreamResult

FLOOR = report.FLOOR
GW = "gw openai→claude"
PASS = "gw openai→openai (passthrough)"
FLOOR_STREAMS = (100.0, 100.0, 200.0)  # µs/event per STREAM_KINDS
FLOOR_JSON = (2.0, 2.0, 2.0)  # ms/req at c=1/16/64


def _results(
    gw_streams: tuple[float | None, ...], gw_json: tuple[float | None, ...], ttfe: tuple[float, float] = (3.0, 3.2)
) -> Results:
    results = Results()
    for target, per_req in ((FLOOR, FLOOR_JSON), (GW, gw_json)):
        for c, v in zip((1, 16, 64), per_req, strict=True):
            results.add_json(JsonResult(target, c, 100.0, 1.0, 2.0, v, 100, 0, ""))
    for target, per_event, ttfe_ms in ((FLOOR, FLOOR_STREAMS, ttfe[0]), (GW, gw_streams, ttfe[1])):
        for (label, c), v in zip(report.STREAM_KINDS, per_event, strict=True):
            if v is not None:
                results.add_stream(StreamResult(target, label, c, 50.0, ttfe_ms, 9.0, v, 100, 0, ""))
    return results


def _line(lines: list[str], what: str) -> str:
    return next(line for line in lines if line.startswith(f"verdict: {GW} {what}"))


@pytest.mark.parametrize(
    ("values", "goals", "expected"),
    [
        ([0.7, 0.8], [0.8, 0.8], "meets"),  # the goal itself meets
        ([0.7, 0.81], [0.8, 0.8], "misses"),
        ([None, 0.7], [0.8, 0.8], "incomplete"),
        ([None, 0.9], [0.8, 0.8], "misses"),  # a missing row never hides a miss
        ([0.79, 0.49, 0.5], [0.8, 0.5, 0.5], "meets"),
        ([0.79, 0.51, 0.5], [0.8, 0.5, 0.5], "misses"),
    ],
)
def test_judge(values: list[float | None], goals: list[float], expected: str) -> None:
    assert report.judge(values, goals) == expected


@pytest.mark.parametrize(
    ("gw_streams", "expected"),
    [
        (
            (74.0, 69.0, 156.0),
            "verdict: gw openai→claude streams: 0.74x / 0.69x / 0.78x the floor (goal ≤ 0.8x): meets",
        ),
        (
            (80.0, 80.0, 160.0),
            "verdict: gw openai→claude streams: 0.80x / 0.80x / 0.80x the floor (goal ≤ 0.8x): meets",
        ),
        (
            (74.0, 69.0, 170.0),
            "verdict: gw openai→claude streams: 0.74x / 0.69x / 0.85x the floor (goal ≤ 0.8x): misses",
        ),
        (
            (150.0, 140.0, 300.0),
            "verdict: gw openai→claude streams: 1.50x / 1.40x / 1.50x the floor (goal ≤ 0.8x): misses",
        ),
        (
            (74.0, None, 156.0),
            "verdict: gw openai→claude streams: 0.74x / - / 0.78x the floor (goal ≤ 0.8x): incomplete",
        ),
    ],
)
def test_stream_verdict_line(gw_streams: tuple[float | None, ...], expected: str) -> None:
    assert _line(report.verdicts(_results(gw_streams, (1.0, 1.0, 1.0))), "streams") == expected


@pytest.mark.parametrize(
    ("gw_json", "ratios", "verdict"),
    [
        ((1.6, 1.0, 1.0), "0.80x / 0.50x / 0.50x", "meets"),
        ((1.7, 0.9, 0.9), "0.85x / 0.45x / 0.45x", "misses"),  # c=1 has the looser 0.8x goal, still missed
        ((1.0, 1.2, 0.9), "0.50x / 0.60x / 0.45x", "misses"),  # c=16 must be at 0.5x
        ((1.0, 0.9, None), "0.50x / 0.45x / -", "incomplete"),
    ],
)
def test_json_verdict_line(gw_json: tuple[float | None, ...], ratios: str, verdict: str) -> None:
    line = _line(report.verdicts(_results((70.0, 70.0, 140.0), gw_json)), "JSON")
    assert line == f"verdict: {GW} JSON: {ratios} the floor at c=1/16/64 (goal ≤ 0.8x / 0.5x / 0.5x): {verdict}"


@pytest.mark.parametrize(("ttfe", "verdict"), [((3.0, 3.5), "meets"), ((3.0, 3.6), "misses"), ((3.0, 2.9), "meets")])
def test_ttfe_verdict_line(ttfe: tuple[float, float], verdict: str) -> None:
    line = _line(report.verdicts(_results((70.0, 70.0, 140.0), (1.0, 1.0, 1.0), ttfe)), "TTFE")
    assert line.endswith(f"(goal ≤ +0.5 ms): {verdict}")


def test_every_gateway_target_is_judged_passthrough_included() -> None:
    results = _results((70.0, 70.0, 140.0), (1.0, 1.0, 1.0))
    results.add_json(JsonResult(PASS, 16, 100.0, 1.0, 2.0, 1.2, 100, 0, ""))
    lines = report.verdicts(results)
    assert f"verdict: {PASS} JSON: - / 0.60x / - the floor at c=1/16/64 (goal ≤ 0.8x / 0.5x / 0.5x): misses" in lines
    assert not any(FLOOR in line for line in lines)  # the floor is the reference, never judged


@pytest.mark.parametrize(
    ("peak", "rounds", "rss_verdict", "growth_verdict"),
    [
        (133.0, [120.0, 121.0, 122.9], "meets", "meets"),
        (135.0, [120.0, 120.0, 123.0], "meets", "meets"),
        (156.0, [120.0, 124.0, 130.0], "misses", "misses"),
    ],
)
def test_memory_verdicts(peak: float, rounds: list[float], rss_verdict: str, growth_verdict: str) -> None:
    memory = MemoryResult(
        rows=[
            {"target": FLOOR, "streams_peak": 500.0, "rounds": [1.0, 90.0]},  # not judged
            {"target": GW, "streams_peak": peak, "rounds": rounds},
        ]
    )
    rss, growth = report.verdicts(Results(), memory)
    assert rss == f"verdict: {GW} RSS with 1000 streams open: peak {peak:.0f} MB (goal ≤ 135 MB): {rss_verdict}"
    assert growth.startswith(f"verdict: {GW} RSS growth from round 1 to round 3:")
    assert growth.endswith(f"(goal: no growth, tolerance 3 MB): {growth_verdict}")


def test_streams_per_target_table_shows_microseconds_and_ratio_side_by_side() -> None:
    text = report.render({}, _results((74.0, 69.0, 156.0), (1.0, 1.0, 1.0)), None, None, "skipped", [])
    assert f"| {GW} | 74.0 µs, 0.74x | 69.0 µs, 0.69x | 156.0 µs, 0.78x | meets |" in text
    assert f"| {FLOOR} | 100.0 µs, 1.00x | 100.0 µs, 1.00x | 200.0 µs, 1.00x |  |" in text


def test_scale_report_has_stream_rows_with_gateway_cpu_per_event() -> None:
    row = {"label": "2 processes behind HAProxy", "rps": 300.0, "scaling": 1.5, "ttfe_p50_ms": 4.0,
           "gw_cpu_us_per_event": 95.5, "gw_cores_busy": 1.43, "lb_cpu_us_per_event": 3.25, "errors": 0,
           "first_error": ""}  # fmt: skip
    text = report.render({}, Results(), None, ScaleResult(rows=[], stream_rows=[row]), None, [])
    assert "| 2 processes behind HAProxy | 300.0 | 1.50 | 4.00 | 95.5 | 1.43 | 3.2 | 0 |" in text
