"""Microseconds per learned lead score: the time `model.score` takes for one lead (features to score
and factors, as a handler calls it for every lead event once a learned model is active).

The lead model is trained (`learning.train`, as the service trains it) on the engaged facts of the
first 70 % of the X Education leads (`evaluate.lead_facts`), then scores the next 1,000 leads, one at a
time, `--runs` times; prints the median and the range of the runs, in CPU time of this process (on a
shared machine the wall clock measures the other work as much as the scoring).

Run: .venv/bin/python -m bench.scoring_model [../shared/data/lead_scoring_x_education/Leads.csv] [--runs 7]
"""

import argparse
import csv
import statistics
import time
from pathlib import Path

from services.scoring.evaluate import DEFAULT_PATH, lead_facts
from services.scoring.learning import Example, train

SCORED_LEADS = 1_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with args.path.open(encoding="utf-8", newline="") as file:
        rows = sorted(csv.DictReader(file), key=lambda r: int(r["Lead Number"]))
    leads = [lead_facts(row, i)[1] for i, row in enumerate(rows)]
    cut = int(len(rows) * 0.7)
    examples = [Example(lead, row["Converted"] == "1", lead.captured_at) for lead, row in zip(leads, rows, strict=True)
                if lead.captured_at is not None]
    model = train(examples[:cut], "bench", lambda _example: 0.5)[0]
    scored = leads[cut:cut + SCORED_LEADS]
    runs_us = []
    for _ in range(args.runs):
        started = time.process_time()
        for lead in scored:
            model.score(lead)
        runs_us.append((time.process_time() - started) / len(scored) * 1e6)
    print(f"{type(model).__name__}: {statistics.median(runs_us):.0f} µs of CPU a lead score (median of {args.runs} runs"
          f" of {len(scored):,} leads; {min(runs_us):.0f}-{max(runs_us):.0f})")


if __name__ == "__main__":
    main()
