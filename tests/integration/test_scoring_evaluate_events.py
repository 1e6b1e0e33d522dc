"""The evaluation through the event path (services/scoring/evaluate_events.py) on a slice of the real
data: its own Postgres, broker and scoring process; the events cross the broker; the service stores the
outcomes, trains and promotes through its API, and scores the rest as they arrive."""

from pathlib import Path

import pytest

from services.scoring.evaluate_events import report, run

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
LEADS = DATA / "lead_scoring_x_education" / "Leads.csv"
DEALS = DATA / "crm_sales_opportunities"


@pytest.mark.skipif(not LEADS.is_file() or not DEALS.is_dir(), reason="the shared data is not beside the repository")
def test_real_leads_and_deals_go_through_the_service_which_trains_on_the_first_and_scores_the_rest() -> None:
    results = run(LEADS, DEALS, train_share=0.7, limit_leads=400, limit_deals=200)

    leads = results["leads"]
    model = leads["model"]
    assert (leads["subjects"], leads["trained_on"], leads["scored"]) == (400, 280, 120)
    assert model["n_train"] + model["n_holdout"] == 280  # every replayed outcome reached the store
    assert model["algorithm"] == "gradient_boosting" and model["promoted"] and model["active"]
    assert leads["versions"] == model["version"]  # after the promotion, every published score is the model's
    assert leads["auc_second"] > 0.75 and leads["auc_first"] > 0.5  # on 120 leads; the whole file: README

    deals = results["opportunities"]
    model = deals["model"]
    assert (deals["subjects"], deals["trained_on"], deals["scored"]) == (200, 140, 60)
    # every replayed outcome reached the store with the moment of its deal's last score while open
    assert model["n_train"] + model["n_holdout"] == 140
    assert model["algorithm"] in {"gradient_boosting", "logistic_regression"}
    assert deals["versions"] == (model["version"] if model["promoted"] else "rules-v1")
    assert 0 <= deals["auc_first"] <= 1 and 0 <= deals["auc_second"] <= 1
    # re-scored as of every month start: the held-out deals still open then were read
    assert deals["open_scores"] > 0 and deals["auc_by_month"]

    printed = report(results)
    assert "leads: 400" in printed and "opportunities: 200" in printed and "with engagement" in printed
