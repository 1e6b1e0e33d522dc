"""The evaluation on the X Education leads, on a slice of the file (the whole file: `python -m
services.scoring.evaluate`)."""

from pathlib import Path

import pytest

from services.scoring.evaluate import evaluate

LEADS = Path(__file__).resolve().parents[3] / "shared" / "data" / "lead_scoring_x_education" / "Leads.csv"


@pytest.mark.skipif(not LEADS.is_file(), reason="the shared data is not beside the repository")
def test_the_learned_model_beats_the_rules_on_real_leads() -> None:
    results = evaluate(LEADS, train_share=0.7, limit=3000)
    assert results["leads"] == 3000 and results["trained_on"] == 2100
    assert results["learned_auc_capture"] > 0.7
    assert results["learned_auc_engaged"] > max(0.8, results["rules_auc_engaged"], results["learned_auc_capture"])
