"""The backtest command's path on a small export written here: deals become events applied through
the forecasting service's EventProcessor in time order; the month-start forecasts and the actuals."""

from decimal import Decimal
from pathlib import Path

import pytest

from services.forecasting import backtest
from services.forecasting.config import forecast_settings
from shared.runtime.postgres import EmbeddedPostgres

# opportunity_id, sales_agent, product, account, deal_stage, engage_date, close_date, close_value
PIPELINE = [
    ("A1", "Moses Frase", "GTX Basic", "Acme", "Won", "2017-02-10", "2017-03-05", "500"),
    ("A2", "Moses Frase", "GTXPro", "Acme", "Won", "2017-03-01", "2017-04-20", "4800"),
    ("A3", "Darcel Schlecht", "GTX Basic", "Betatech", "Lost", "2017-03-02", "2017-04-02", "0"),
    ("A4", "Darcel Schlecht", "GTX Basic", "", "Won", "2017-03-20", "2017-05-10", "550"),
    ("A5", "Darcel Schlecht", "GTX Basic", "", "Engaging", "2017-04-01", "", ""),
    ("A6", "Moses Frase", "GTX Basic", "", "Prospecting", "", "", ""),
]


@pytest.fixture
def export(tmp_path: Path) -> Path:
    (tmp_path / "products.csv").write_text(
        "product,series,sales_price\r\nGTX Basic,GTX,550\r\nGTX Pro,GTX,4821\r\n", encoding="utf-8")
    rows = ["opportunity_id,sales_agent,product,account,deal_stage,engage_date,close_date,close_value"]
    rows += [",".join(r) for r in PIPELINE]
    (tmp_path / "sales_pipeline.csv").write_text("\r\n".join(rows) + "\r\n", encoding="utf-8")
    (tmp_path / "sales_teams.csv").write_text(
        "sales_agent,manager,regional_office\r\nMoses Frase,Cara Losch,East\r\n"
        "Darcel Schlecht,Melvin Marxen,Central\r\n", encoding="utf-8")
    return tmp_path


async def test_the_backtest_replays_deals_as_events_and_forecasts_each_month_from_what_was_known(
    postgres: EmbeddedPostgres, export: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FUNNELCAST_FORECAST_CURRENCY", "USD")
    forecast_settings.cache_clear()
    try:
        events = backtest.deal_events(export)
        # created and moved to bidding per deal with an engage date; won or lost per closed deal
        assert len(events) == 5 * 2 + 4
        assert [e.time for e in events] == sorted(e.time for e in events)
        # While open a deal is worth its list price (a won deal's close value would tell the outcome);
        # the won event brings the close value.
        a2 = {e.type: e.data for e in events if e.subject == "maven-A2"}
        assert a2["sales.opportunity.created.v1"]["amount"] == "4821.00"
        assert a2["sales.opportunity.created.v1"]["region"] == "East"
        assert a2["sales.opportunity.stage_changed.v1"]["amount"] == "4821.00"
        assert a2["sales.opportunity.won.v1"]["amount"] == "4800.00"
        figures = await backtest.run(postgres.url, export, batch=3)
    finally:
        forecast_settings.cache_clear()
    assert figures["events"] == 14
    assert (figures["actual"]["2017-04"], figures["actual"]["2017-05"]) == (Decimal(4800), Decimal(550))
    april, may = figures["forecasts"]["2017-04"], figures["forecasts"]["2017-05"]
    # at April's start only March's 500 was known; at May's, March and April (mean of 500 and 4800)
    assert (april.point, april.history_months) == (Decimal(500), 1)
    assert (may.point, may.history_months) == (Decimal(2650), 2)
    # after the last event the months are still forecast: June is the seasonal naive of March
    assert figures["forecasts"]["2017-06"].point == Decimal(500) and len(figures["forecasts"]) == 9
    assert figures["wape"]["model"] is not None
