"""The forecasting service's own settings (`FUNNELCAST_FORECAST_*`): category rules and currency."""

from decimal import Decimal
from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict

from services.forecasting.domain import CategoryRules, Rates, parse_rates


class ForecastSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FUNNELCAST_FORECAST_", extra="ignore")

    # comma-separated stage names
    commit_stages: str = "contract"
    best_case_stages: str = "negotiation"
    # percent; empty: the stage alone decides
    commit_min_probability: Decimal | None = None
    best_case_min_probability: Decimal | None = None
    # every figure is in this currency; other currencies convert at `rates` (`USD=7.1,EUR=7.8`)
    # and deals in a currency without a rate are left out of the figures
    currency: str = "CNY"
    rates: str = ""

    def category_rules(self) -> CategoryRules:
        return CategoryRules(
            commit_stages=_names(self.commit_stages),
            best_case_stages=_names(self.best_case_stages),
            commit_min_probability=self.commit_min_probability,
            best_case_min_probability=self.best_case_min_probability,
        )

    def conversion(self) -> Rates:
        return parse_rates(self.currency, self.rates)


def _names(text: str) -> frozenset[str]:
    return frozenset(p.strip() for p in text.split(",") if p.strip())


@lru_cache
def forecast_settings() -> ForecastSettings:
    return ForecastSettings()
