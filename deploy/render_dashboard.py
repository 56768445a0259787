"""Draws deploy/grafana-dashboard.json as a PNG from a Prometheus, where no Grafana is at hand.

    python deploy/render_dashboard.py --prometheus http://127.0.0.1:9090 --minutes 15 --out dashboard.png

Each panel's queries run over the time range (query_range) exactly as the dashboard has them, with
`$instance` = every server and `$__rate_interval` = `--rate-window`; panels sit where the JSON's
grid puts them. Rows, stats (last value, value mappings) and time series (legend from
`legendFormat`, unit on the axis) are drawn; that is every panel type the dashboard uses. It is a
preview of the same dashboard, not Grafana's rendering: import the JSON in Grafana for the real one.
Needs matplotlib (in wsd's test extras).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

DASHBOARD = Path(__file__).with_name("grafana-dashboard.json")
BACKGROUND, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
PALETTE = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#fade2a", "#c4162a"]
UNIT_HEIGHT_PX, WIDTH_PX, DPI = 30, 1800, 100
# Steps between time-axis ticks, in seconds: the smallest that leaves a panel few enough labels.
TICK_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def query_range(base: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{params}", timeout=30) as reply:
        body = json.load(reply)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body.get('error')}")
    return body["data"]["result"]


def legend(template: str, labels: dict[str, str]) -> str:
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), template)
    return text or ", ".join(f"{k}={v}" for k, v in labels.items() if k != "__name__") or "value"


def format_value(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "-"
    if unit == "percentunit":
        return f"{value * 100:.1f}%" if abs(value) >= 0.01 or value == 0 else f"{value * 100:.2g}%"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if abs(value) < 1 else f"{value:.2f} s"
    if unit in ("bytes", "Bps"):
        for suffix in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(value) < 1024 or suffix == "TiB":
                return f"{value:.0f} {suffix}" if suffix == "B" else f"{value:.1f} {suffix}"
            value /= 1024
    suffix = {"reqps": " req/s", "Bps": "/s"}.get(unit, "")
    for scale, letter in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{letter}{suffix}"
    return f"{value:.3g}{suffix}"


def time_ticks(start: float, end: float, most: int) -> tuple[list[float], int]:
    """Tick times (Unix seconds) on round multiples of one step, at most `most` of them, and the step.
    (matplotlib's AutoDateLocator finds no step between 30 s and 5 min for a range of a few minutes
    and falls back to 30 s, whose labels run into each other on a narrow panel.)"""
    span = max(end - start, 1.0)
    step = next((s for s in TICK_STEPS_S if span / s <= most), TICK_STEPS_S[-1])
    first = math.ceil(start / step) * step
    return [first + i * step for i in range(int((end - first) // step) + 1)], step


def concrete(expr: str, rate_window: str) -> str:
    return expr.replace("$__rate_interval", rate_window).replace("$instance", ".*")


def render(base: str, start: float, end: float, out: Path, rate_window: str, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    grid_bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    header_px = 50
    height_px = grid_bottom * UNIT_HEIGHT_PX + header_px
    figure = plt.figure(figsize=(WIDTH_PX / DPI, height_px / DPI), dpi=DPI, facecolor=BACKGROUND)
    stamp = f"{datetime.fromtimestamp(start):%Y-%m-%d %H:%M:%S} – {datetime.fromtimestamp(end):%H:%M:%S}"
    figure.text(0.005, 1 - 18 / height_px, f"{title or dashboard['title']}    {stamp}", color=TEXT, fontsize=15,
                va="center", weight="bold")  # fmt: skip
    step = max(1.0, (end - start) / 300)
    gap = 4  # px between panels

    def to_figure(left: float, top: float, width: float, height: float) -> list[float]:
        """Pixel box (from the top left) to matplotlib's figure fractions (from the bottom left)."""
        return [left / WIDTH_PX, 1 - (top + height) / height_px, width / WIDTH_PX, height / height_px]

    for panel in panels:
        grid = panel["gridPos"]
        left = grid["x"] / 24 * WIDTH_PX + gap
        top = header_px + grid["y"] * UNIT_HEIGHT_PX + gap
        width = grid["w"] / 24 * WIDTH_PX - 2 * gap
        height = grid["h"] * UNIT_HEIGHT_PX - 2 * gap
        if panel["type"] == "row":
            figure.text(left / WIDTH_PX, 1 - (top + height / 2) / height_px, panel["title"], color=TEXT,
                        fontsize=12, va="center", weight="bold")  # fmt: skip
            continue
        frame = figure.add_axes(to_figure(left, top, width, height), facecolor=PANEL)
        frame.set_xticks([])
        frame.set_yticks([])
        for spine in frame.spines.values():
            spine.set_color(GRID)
        frame.text(8 / width, 1 - 14 / height, panel["title"], color=TEXT, fontsize=10, va="center",
                   transform=frame.transAxes, weight="bold")  # fmt: skip
        unit = panel["fieldConfig"]["defaults"].get("unit", "short")
        series = []
        for target in panel["targets"]:
            for result in query_range(base, concrete(target["expr"], rate_window), start, end, step):
                points = [(float(t), float(v)) for t, v in result["values"]]
                series.append((legend(target.get("legendFormat", ""), result["metric"]), points))
        if panel["type"] == "stat":
            _draw_stat(frame, panel, series, unit)
            continue
        # As many legend columns as the longest name leaves room for (7 pt: ~5.5 px a character, plus
        # the line and the spacing), so short names (close codes) all fit in the three rows.
        longest = max((len(name) for name, _ in series), default=1)
        columns = max(1, int((width - 16) // (longest * 5.5 + 34)))
        shown = series[: 3 * columns]
        legend_rows = -(-len(shown) // columns) if shown else 0
        legend_px = 14 * legend_rows + 6
        plot_top, plot_left = top + 28, left + 62
        plot_height = height - 28 - 20 - legend_px
        axes = figure.add_axes(to_figure(plot_left, plot_top, width - 62 - 10, plot_height), facecolor=PANEL)
        for spine in axes.spines.values():
            spine.set_visible(False)
        for index, (name, points) in enumerate(series):
            times = [datetime.fromtimestamp(t) for t, _ in points]
            axes.plot(times, [v for _, v in points], color=PALETTE[index % len(PALETTE)], linewidth=1.2, label=name)
        axes.set_xlim(datetime.fromtimestamp(start), datetime.fromtimestamp(end))
        axes.tick_params(colors=TEXT, labelsize=8, length=0)
        axes.grid(color=GRID, linewidth=0.5)
        ticks, tick_step = time_ticks(start, end, max(3, int(width // 110)))
        axes.set_xticks([datetime.fromtimestamp(t) for t in ticks])
        axes.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M" if tick_step % 60 == 0 else "%H:%M:%S"))
        axes.yaxis.set_major_locator(MaxNLocator(nbins=max(2, int(plot_height // 30))))
        axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos, unit=unit: format_value(value, unit)))
        axes.set_ylim(bottom=0)
        if not series:
            axes.text(0.5, 0.5, "No data", color=TEXT, ha="center", va="center", transform=axes.transAxes)
            continue
        legend_top = plot_top + plot_height + 20
        anchor = ((left + 8) / WIDTH_PX, 1 - legend_top / height_px)
        axes.legend([line for line in axes.get_lines()][: len(shown)], [name for name, _ in shown],
                    loc="upper left", bbox_to_anchor=anchor, bbox_transform=figure.transFigure, fontsize=7,
                    frameon=False, labelcolor=TEXT, ncol=columns, borderaxespad=0, borderpad=0,
                    handlelength=1.2, columnspacing=1.2, labelspacing=0.35)  # fmt: skip
    figure.savefig(out, facecolor=BACKGROUND)
    plt.close(figure)
    return out


def _draw_stat(axes, panel: dict, series: list, unit: str) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    if not series or not series[0][1]:
        axes.text(0.5, 0.45, "No data", color=TEXT, ha="center", va="center", fontsize=16, transform=axes.transAxes)
        return
    if panel["options"].get("textMode") == "name":
        text, color = ", ".join(name for name, _ in series), PALETTE[0]
    else:
        value = series[0][1][-1][1]
        text = format_value(value, unit) if unit != "none" else f"{value:g}"
        steps = defaults.get("thresholds", {}).get("steps", [])
        color = next((s["color"] for s in reversed(steps) if s["value"] is None or value >= s["value"]), PALETTE[0])
        for mapping in defaults.get("mappings", []):
            option = mapping.get("options", {}).get(f"{value:g}")
            if option:
                text, color = option.get("text", text), option.get("color", color)
        color = {"green": PALETTE[0], "red": PALETTE[4], "orange": PALETTE[3]}.get(color, color)
    axes.text(0.5, 0.45, text, color=color, ha="center", va="center", fontsize=22, weight="bold",
              transform=axes.transAxes)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090", help="the Prometheus that scrapes wsd")
    parser.add_argument("--minutes", type=float, default=15, help="time range: the last N minutes (default 15)")
    parser.add_argument("--end", type=float, help="end of the range, Unix time (default now)")
    parser.add_argument("--rate-window", default="1m", help="what $__rate_interval stands for (default 1m)")
    parser.add_argument("--title", help="title above the panels (default the dashboard's)")
    parser.add_argument("--out", type=Path, default=Path("dashboard.png"))
    args = parser.parse_args(argv)
    end = args.end or time.time()
    path = render(args.prometheus, end - args.minutes * 60, end, args.out, args.rate_window, args.title)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
