"""Evaluate the lead scores on the X Education data (../shared/data/lead_scoring_x_education/Leads.csv).

    python -m services.scoring.evaluate [PATH_TO_Leads.csv] [--train-share 0.7]

Each row becomes the data of the capture and engagement events the leads service would publish
(`lead_event_data`), applied through the same domain code the handlers use (`LeadFeatures.captured` /
`.engaged`): Lead Origin, Lead Source and the form answers as `attributes`, TotalVisits, Total Time
Spent on Website and page views as engagement. The file has no contact details, so every lead gets a
placeholder e-mail address (the opt-out stays an attribute). The columns SOURCE.md says leak the
outcome (Tags, Lead Quality, Lead Profile, the Asymmetrique columns, Last Activity, Last Notable
Activity) are left out. Rows are ordered by Lead Number (the file has no dates); the learned model
trains on the first part and both it and the rules are scored on the rest, at capture (profile only)
and once engagement is known. Prints ROC AUC.

This applies the facts in process; `evaluate_events.py` replays the same events through the broker to
the running service.
"""

import argparse
import csv
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from services.scoring.domain import LeadFeatures, score_lead
from services.scoring.learning import Example, train

DEFAULT_PATH = Path("..") / "shared" / "data" / "lead_scoring_x_education" / "Leads.csv"
PROFILE_COLUMNS = (
    "Lead Origin", "Lead Source", "Do Not Email", "Do Not Call", "Country", "Specialization",
    "How did you hear about X Education", "What is your current occupation",
    "What matters most to you in choosing a course", "City", "A free copy of Mastering The Interview",
    "Search", "Newspaper Article", "X Education Forums", "Newspaper", "Digital Advertisement",
    "Through Recommendations",
)
START = datetime(2018, 1, 1, tzinfo=UTC)


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return 0.0


def read_leads(path: Path, limit: int | None = None) -> list[dict[str, str]]:
    """The file's rows in Lead Number order (it has no dates: the nearest thing to arrival order)."""
    with path.open(encoding="utf-8", newline="") as file:
        rows = sorted(csv.DictReader(file), key=lambda r: int(r["Lead Number"]))
    return rows[:limit] if limit else rows


def captured_at(index: int) -> datetime:
    """The capture time given to the `index`-th lead: a minute apart, in file order."""
    return START + timedelta(minutes=index)


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC, as event data carries times."""
    return moment.isoformat().replace("+00:00", "Z")


def lead_event_data(row: dict[str, str], at: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
    """The data of the `sales.lead.captured.v1` and `sales.lead.engaged.v1` events a row stands for."""
    lead_id = f"xedu-{row['Lead Number']}"
    attributes = {column: (row.get(column) or "").strip() for column in PROFILE_COLUMNS}
    attributes = {k: v.lower() if k == "Lead Source" else v for k, v in attributes.items() if v and v != "Select"}
    captured = {
        "lead_id": lead_id, "source": "web_form", "grade": None, "owner_id": None, "campaign_id": None,
        "region": None, "captured_at": timestamp(at), "attributes": attributes,
        "contact": {"name": row["Prospect ID"], "email": f"{lead_id}@example.com"},
    }
    visits = _number(row.get("TotalVisits", ""))
    engaged = {
        "lead_id": lead_id, "visits": int(visits),
        "time_on_site_s": _number(row.get("Total Time Spent on Website", "")),
        "page_views": int(round(visits * _number(row.get("Page Views Per Visit", "")))), "activity": None,
    }
    return captured, engaged


def lead_facts(row: dict[str, str], index: int) -> tuple[LeadFeatures, LeadFeatures]:
    """The lead as known at capture, and once its engagement is reported."""
    at = captured_at(index)
    captured, engaged = lead_event_data(row, at)
    known = LeadFeatures().captured(captured, at)
    return known, known.engaged(engaged["visits"], engaged["time_on_site_s"], engaged["page_views"],
                                engaged["activity"])


def roc_auc(truth: Sequence[bool], scores: Sequence[float]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(truth, scores))


def evaluate(path: Path, train_share: float = 0.7, limit: int | None = None) -> dict[str, float]:
    rows = read_leads(path, limit)
    facts = [lead_facts(row, i) for i, row in enumerate(rows)]
    labels = [row["Converted"] == "1" for row in rows]
    cut = int(len(rows) * train_share)
    results: dict[str, float] = {"leads": len(rows), "trained_on": cut}
    for stage, pick in (("capture", 0), ("engaged", 1)):
        examples = [Example(f[pick], y, f[pick].captured_at or START) for f, y in zip(facts, labels, strict=True)]
        # train() keeps its own newest 20 % aside to compare with the rules; here the test part is the rest.
        model = train(examples[:cut], f"eval-{stage}", lambda e: 0.0)[0]
        test = examples[cut:]
        truth = [e.positive for e in test]
        leads = [(e.features, e.observed_at) for e in test if isinstance(e.features, LeadFeatures)]
        results[f"rules_auc_{stage}"] = roc_auc(truth, [score_lead(f, at).score for f, at in leads])
        results[f"learned_auc_{stage}"] = roc_auc(truth, [model.probability(e.features) for e in test])
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--train-share", type=float, default=0.7)
    args = parser.parse_args(argv)
    results = evaluate(args.path, args.train_share)
    print(f"{int(results['leads'])} leads, learned model trained on the first {int(results['trained_on'])}")
    for stage in ("capture", "engaged"):
        print(f"ROC AUC at {stage:8}: rules-v1 {results[f'rules_auc_{stage}']:.3f}"
              f"  learned {results[f'learned_auc_{stage}']:.3f}")


if __name__ == "__main__":
    main()
