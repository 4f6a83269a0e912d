"""Intervals, effects and concurrency on hand-built values with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis import metrics, published, stats, timescales

MS = 1_000_000


def test_the_interval_holds_the_mean_and_narrows_with_more_units() -> None:
    rng = np.random.default_rng(1)
    few, many = rng.normal(10, 2, 10), rng.normal(10, 2, 1000)
    small, large = stats.interval(few), stats.interval(many)
    assert small.low < few.mean() < small.high and large.low < many.mean() < large.high
    assert large.high - large.low < (small.high - small.low) / 5
    assert 9.7 < large.low < 10 < large.high < 10.3  # the true mean, within ~2 standard errors (0.063)
    assert stats.interval(few) == small  # seeded: a report reproduces exactly


def test_an_interval_needs_two_units_and_ignores_missing_values() -> None:
    one = stats.interval([3.0, math.nan])
    assert one.mean == 3.0 and one.n == 1 and not one.known and one.format("{:.1f}") == "3.0 [n < 2]"
    assert math.isnan(stats.interval([]).mean) and stats.interval([]).format("{:.1f}") == "–"
    same = stats.interval([4.0, 4.0, 4.0])
    assert (same.low, same.high) == (4.0, 4.0) and same.format("{:.1f}") == "4.0 [4.0, 4.0]"


def test_difference_and_ratio_find_a_real_effect_and_not_a_null_one() -> None:
    rng = np.random.default_rng(2)
    base, treated, null = rng.normal(5, 1, 50), rng.normal(15, 1, 50), rng.normal(5, 1, 50)
    effect = stats.difference(treated, base)
    assert effect.excludes(0) and 9 < effect.low < 10 < effect.high < 11
    times = stats.ratio(treated, base)
    assert times.excludes(1) and 2.6 < times.low < 3 < times.high < 3.4
    assert not stats.difference(null, base).excludes(0)
    assert stats.interval(null).overlaps(stats.interval(base))
    assert not stats.interval(treated).overlaps(stats.interval(base))
    assert math.isnan(stats.ratio([1.0, 2.0], [0.0, 0.0]).mean)


def test_concurrent_flows_are_weighted_by_how_long_each_count_held() -> None:
    flows = pd.DataFrame(
        {
            "node": ["a", "a", "a", "b"],
            "start_ns": [0, 10 * MS, 20 * MS, 0],
            "end_ns": [30 * MS, 20 * MS, 40 * MS, 5 * MS],
        }
    )
    held = stats.concurrent_flows(flows)
    on_a = held[held["node"] == "a"].groupby("open")["duration_ns"].sum().to_dict()
    # 0-10 ms one open, 10-30 ms two (the second ends at 20 as the third starts), 30-40 ms one
    assert on_a == {1: 20 * MS, 2: 20 * MS}
    assert held[held["node"] == "b"].set_index("open")["duration_ns"].to_dict() == {1: 5 * MS}
    assert stats.concurrent_flows(flows.iloc[:0]).empty


def test_the_headline_leaves_out_warmup_sessions_and_unmatched_traffic_and_counts_them() -> None:
    per_task = pd.DataFrame({"trace_id": ["t1", "w1"], "warmup": [False, True]})
    conns = pd.DataFrame(
        {
            "conn_id": [0, 1, 2, 3],
            "trace_id": ["t1", "w1", "s", None],
            "call_id": ["c1", "c2", "c3", None],
            "label": ["matched", "matched", "matched", "unmatched: ssh"],
        }
    )
    packets = pd.DataFrame({"conn_id": [0, 0, 1, 3, 3, 3, np.nan]})
    rtt = pd.DataFrame({"conn_id": [0, 2]})
    out = metrics.excluded(per_task, conns, packets, rtt)
    assert out.loc["measured tasks"].tolist() == [1, 2, 1]
    assert out.loc["warm-up tasks"].tolist() == [1, 1, 0]
    assert out.loc["calls outside a task"].tolist() == [1, 0, 1]
    assert out.loc["unmatched: ssh"].tolist() == [1, 3, 0]
    assert out.loc["no connection", "packets"] == 1


def test_poisson_arrivals_have_unit_dispersion_and_no_long_range_dependence() -> None:
    rng = np.random.default_rng(3)
    ts = np.cumsum(rng.exponential(MS, 200_000)).astype(np.int64)  # 1000 packets/s for ~200 s
    packets = pd.DataFrame({"ts_ns": ts, "wire_len": 100, "group": "poisson"})
    curve = timescales.dispersion(packets, "group", 0, int(ts[-1]))
    assert curve.loc[curve["windows"] >= 100, "idc_pkts"].between(0.85, 1.15).all(), curve
    assert abs(timescales.hurst(curve, "group")["poisson"] - 0.5) < 0.05
    assert curve["windows"].iloc[0] == int(ts[-1]) // MS and curve["timescale_ms"].max() <= ts[-1] / MS / 10


def test_on_off_trains_are_bursty_across_timescales_and_split_into_periods() -> None:
    # 10 packets 0.1 ms apart every 500 ms for 100 s: within a train the counts disperse like batches of
    # 10 (IDC ~ 10); a window of the period or a multiple holds exactly one train or two: no dispersion
    ts = np.array([t * 500 * MS + k * MS // 10 for t in range(200) for k in range(10)], dtype=np.int64)
    packets = pd.DataFrame({"ts_ns": ts, "wire_len": 1500, "group": "trains"})
    curve = timescales.dispersion(packets, "group", 0, 100_000 * MS).set_index("timescale_ms")
    assert curve.loc[1, "idc_pkts"] == pytest.approx(10, rel=0.01)
    assert curve.loc[500, "idc_pkts"] == curve.loc[1000, "idc_pkts"] == 0
    assert curve.loc[1, "peak_to_mean"] == pytest.approx(10 / (2000 / 100_000))
    periods = timescales.on_off(packets, "group")
    on, off = periods[periods["state"] == "on"], periods[periods["state"] == "off"]
    assert len(on) == 200 and (on["duration_ns"] == 9 * MS // 10).all()
    assert len(off) == 199 and (off["duration_ns"] == 500 * MS - 9 * MS // 10).all()


def test_upstream_bytes_come_from_the_side_that_connected() -> None:
    flows = pd.DataFrame(
        {
            "conn_id": [0, 0, 1, 2],
            "direction": ["accept", "connect", "connect", "connect"],
            "tx_bytes": [200.0, 900.0, 50.0, np.nan],  # conn 2 still open: no byte counts
            "rx_bytes": [900.0, 200.0, 400.0, np.nan],
        }
    )
    sized = published.directions(flows, pd.Series([0, 1, 2]))
    assert sized.loc[0].tolist() == [900.0, 200.0]  # the server's end: what it received went up
    assert sized.loc[1].tolist() == [50.0, 400.0] and 2 not in sized.index
