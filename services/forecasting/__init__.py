"""The forecasting service: owns forecasts, quotas, funnel analytics."""
