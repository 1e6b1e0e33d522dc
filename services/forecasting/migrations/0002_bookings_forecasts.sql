-- Every bookings forecast made (over the API or by the backtest), for accuracy against the actuals.
CREATE TABLE bookings_forecasts (
    id                bigserial PRIMARY KEY,
    period            text NOT NULL,
    made_at           timestamptz NOT NULL,
    as_of             date NOT NULL,      -- what was known: the events applied up to this day
    point             numeric NOT NULL,
    low               numeric NOT NULL,
    high              numeric NOT NULL,
    method            text NOT NULL,
    pipeline_estimate numeric,
    currency          text NOT NULL
);
CREATE INDEX bookings_forecasts_by_period ON bookings_forecasts (period, id);
CREATE INDEX deals_by_close ON deals (closed_on) WHERE status = 'won';
