"""SVG charts, written by hand (a few shapes need no plotting library). No I/O.

The funnel: one centred bar per stage, its width the deals that reached it, labelled with the count,
the amount and the conversion to the next stage. Forecast vs actual: per month, a bar of the actual
closed-won value, the forecast as a dot with its 80 % interval as a line.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from html import escape

from services.forecasting.funnel import Funnel

_FONT = 'font-family="sans-serif" font-size="12"'


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
        ' role="img">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-family="sans-serif" font-size="15" font-weight="bold">'
        f"{escape(title)}</text>",
        *body,
        "</svg>",
    ])


def _short(amount: Decimal) -> str:
    value = float(amount)
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.0f}"


def funnel_svg(figures: Funnel, title: str, currency: str) -> str:
    width, bar_height, gap, top = 640, 44, 10, 40
    widest = max((s.reached for s in figures.stages), default=0) or 1
    body = []
    for i, stage in enumerate(figures.stages):
        bar = max(2.0, 420 * stage.reached / widest)
        y = top + i * (bar_height + gap)
        conversion = "" if stage.conversion_to_next is None else f" → {stage.conversion_to_next:.0%}"
        body += [
            f'<rect x="{(width - bar) / 2:.1f}" y="{y}" width="{bar:.1f}" height="{bar_height}" fill="#3b7dd8"'
            f' opacity="{1 - i * 0.15:.2f}"><title>{escape(stage.stage)}: {stage.reached}</title></rect>',
            f'<text x="{width / 2}" y="{y + bar_height / 2 + 4}" text-anchor="middle" fill="white" {_FONT}>'
            f"{escape(stage.stage)} · {stage.reached} · {_short(stage.amount)} {escape(currency)}{conversion}</text>",
        ]
    y = top + len(figures.stages) * (bar_height + gap) + 16
    win_rate = "n/a" if figures.win_rate is None else f"{figures.win_rate:.0%}"
    cycle = "n/a" if figures.median_sales_cycle_days is None else f"{figures.median_sales_cycle_days:.0f} days"
    body.append(f'<text x="{width / 2}" y="{y}" text-anchor="middle" {_FONT}>won {figures.won} '
                f"({_short(figures.won_amount)} {escape(currency)}) · lost {figures.lost} · win rate {win_rate}"
                f" · median sales cycle {cycle}</text>")
    return _svg(width, y + 16, title, body)


@dataclass(frozen=True)
class ForecastPoint:
    period: str
    actual: Decimal | None
    forecast: Decimal | None
    low: Decimal | None
    high: Decimal | None


def forecast_vs_actual_svg(points: Sequence[ForecastPoint], title: str, currency: str) -> str:
    width, height, left, bottom, top = 720, 360, 70, 50, 40
    plot_height = height - top - bottom
    values = [v for p in points for v in (p.actual, p.high, p.forecast) if v is not None]
    ceiling = float(max(values, default=Decimal(1))) or 1.0
    step = (width - left - 20) / max(1, len(points))

    def y_of(value: Decimal) -> float:
        return top + plot_height * (1 - float(value) / ceiling)

    body = [f'<line x1="{left}" y1="{top + plot_height}" x2="{width - 20}" y2="{top + plot_height}" stroke="#444"/>']
    for fraction in (0.0, 0.5, 1.0):
        y = top + plot_height * (1 - fraction)
        body.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" {_FONT}>'
                    f"{_short(Decimal(str(ceiling * fraction)))}</text>")
    for i, point in enumerate(points):
        x = left + i * step + step / 2
        if point.actual is not None:
            y = y_of(point.actual)
            body.append(f'<rect x="{x - step * 0.3:.1f}" y="{y:.1f}" width="{step * 0.6:.1f}"'
                        f' height="{top + plot_height - y:.1f}" fill="#9cc3f0"><title>{escape(point.period)} actual'
                        f" {_short(point.actual)}</title></rect>")
        if point.low is not None and point.high is not None:
            body.append(f'<line x1="{x:.1f}" y1="{y_of(point.low):.1f}" x2="{x:.1f}" y2="{y_of(point.high):.1f}"'
                        ' stroke="#d8573b" stroke-width="2"/>')
        if point.forecast is not None:
            body.append(f'<circle cx="{x:.1f}" cy="{y_of(point.forecast):.1f}" r="5" fill="#d8573b">'
                        f"<title>{escape(point.period)} forecast {_short(point.forecast)}</title></circle>")
        body.append(f'<text x="{x:.1f}" y="{top + plot_height + 18}" text-anchor="middle" {_FONT}>'
                    f"{escape(point.period)}</text>")
    body.append(f'<text x="{left}" y="{height - 10}" {_FONT}>bars: closed won · dot: forecast · line: 80% interval'
                f" ({escape(currency)})</text>")
    return _svg(width, height, title, body)
