"""The stage-change benchmark (bench/opportunities.py) runs end to end, in miniature:
real service processes on loopback, the session's Postgres and Tansu, every event relayed."""

from bench.opportunities import parser, report, run
from shared.settings import Settings


async def test_the_benchmark_runs_and_reports(settings: Settings) -> None:
    args = parser().parse_args(
        ["--processes", "1", "--opportunities", "20", "--changes", "100", "--concurrency", "4", "--rate", "20",
         "--seconds", "1"]
    )
    result = await run(settings, args)
    assert result["changes_per_s"] > 0 and result["bare"] > 0
    assert result["samples"] == 20 and 0 < result["latency"]["p50"] <= result["latency"]["p99"]
    assert "stage changes via API" in report(result, args)
