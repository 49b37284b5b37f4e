"""The console's charts (taskyard_ui.charts): the queue wait's p50 drawn inside its p95, and a
queue's depth stacked by priority, each layer on its chart's own scale."""

from taskyard_ui.charts import PLOT_BOTTOM, PLOT_TOP, stats_charts
from taskyard_ui.routes_console import _depth_chart

PLOT_H = PLOT_BOTTOM - PLOT_TOP


def bucket(at: str, p50: float | None, p95: float | None) -> dict:
    return {"at": at, "succeeded": 1, "failed": 0, "dead": 0, "wait_p50_s": p50, "wait_p95_s": p95}


def test_wait_p50_is_a_layer_inside_the_p95_bars():
    stats = {
        "bucket_s": 60,
        "buckets": [
            bucket("2026-12-06T10:00:00Z", 0.1, 0.4),
            bucket("2026-12-06T10:01:00Z", None, None),
            bucket("2026-12-06T10:02:00Z", 0.3, 0.8),
        ],
    }
    wait = stats_charts(stats)[2]
    assert (wait.title, wait.name, wait.total, wait.peak) == ("Queue wait p95", "p95", 800, 800)
    [p50] = wait.layers
    assert (p50.name, p50.css) == ("p50", "bar-wait-p50")
    assert [b.height for b in wait.bars] == [PLOT_H / 2, 0, PLOT_H]
    assert [b.height for b in p50.bars] == [round(PLOT_H / 8, 2), 0, round(PLOT_H * 3 / 8, 2)]
    assert [b.x for b in p50.bars] == [b.x for b in wait.bars]
    assert p50.bars[2].label == "10:02 UTC: p50 300 ms"


def test_queue_depth_is_stacked_by_priority():
    history = [
        {"at": "2026-12-06T10:00:00Z", "high": 2, "normal": 4, "low": 2},
        {"at": "2026-12-06T10:01:00Z", "high": 0, "normal": 0, "low": 1},
    ]
    chart = _depth_chart({"depth_history": history})
    assert (chart.name, chart.css, chart.total, chart.peak) == ("high", "bar-high", 1, 8)
    assert [b.count for b in chart.bars] == [8, 1]
    normal, low = chart.layers
    assert [(layer.name, layer.css) for layer in chart.layers] == [
        ("normal", "bar-normal"),
        ("low", "bar-low"),
    ]
    # Each layer starts at the axis; the part of a bar above the next layer is that priority's depth.
    assert [b.height for b in normal.bars] == [round(PLOT_H * 6 / 8, 2), round(PLOT_H / 8, 2)]
    assert [b.height for b in low.bars] == [round(PLOT_H * 2 / 8, 2), round(PLOT_H / 8, 2)]
    assert chart.bars[0].height - normal.bars[0].height == round(PLOT_H * 2 / 8, 2)
    assert normal.bars[0].label == "10:00 UTC: normal + low 6"
