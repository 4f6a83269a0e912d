"""Burstiness across timescales, per link (a node's interface) and per node.

- Index of dispersion for counts, IDC(T) = Var(N_T) / E[N_T], of the packets (and bytes) in
  consecutive windows of length T (Gusella, "Characterizing the variability of arrival
  processes with indexes of dispersion", IEEE JSAC 9(2), 1991). A Poisson stream has IDC 1
  at every T; a bursty one's grows with T.
- The variance-time curve is IDC over T from 1 ms to 10 s. For a self-similar stream
  Var(N_T) ~ T^(2H), so IDC(T) ~ T^(2H - 1) and the Hurst parameter is H = (1 + slope) / 2
  of log IDC against log T (Leland, Taqqu, Willinger and Wilson, "On the self-similar nature
  of Ethernet traffic", IEEE/ACM ToN 2(1), 1994). H = 0.5: no long-range dependence.
- Peak-to-mean at each T: the busiest window's count over the mean count.
- ON/OFF periods: a link is ON while its packets follow each other within BURST_GAP_NS and
  OFF in the gaps between (the packet-train view of Jain and Routhier, IEEE JSAC 4(6), 1986).

Windows span the measured tasks (first start to last end), so idle time before and after the
workload does not count as burstiness.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.metrics import BURST_GAP_NS

MS = 1_000_000
TIMESCALES_NS = tuple(int(t * MS) for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000))
MIN_WINDOWS = 20  # below this the variance of the counts is too noisy to report (its relative error ~ sqrt(2/n))
MIN_POINTS = 3  # timescales needed for a Hurst fit


def _counts(ts_ns: np.ndarray, weights: np.ndarray, start_ns: int, end_ns: int, window_ns: int) -> np.ndarray:
    windows = int((end_ns - start_ns) // window_ns)
    inside = (ts_ns >= start_ns) & (ts_ns < start_ns + windows * window_ns)
    slots = (ts_ns[inside] - start_ns) // window_ns
    return np.bincount(slots, weights=weights[inside], minlength=windows)


def dispersion(packets: pd.DataFrame, by: str, start_ns: int, end_ns: int) -> pd.DataFrame:
    """`packets` (ts_ns, wire_len, `by`): per group and timescale, the windows counted, the mean packets
    per window, IDC of packets and of bytes, and the peak-to-mean of packets."""
    rows = []
    for group, part in packets.groupby(by, observed=True):
        ts = part["ts_ns"].to_numpy(np.int64)
        ones, sizes = np.ones(len(ts)), part["wire_len"].to_numpy(np.float64)
        for window in TIMESCALES_NS:
            if (end_ns - start_ns) // window < MIN_WINDOWS:
                break
            pkts, octets = _counts(ts, ones, start_ns, end_ns, window), _counts(ts, sizes, start_ns, end_ns, window)
            mean, mean_bytes = pkts.mean(), octets.mean()
            rows.append(
                {
                    by: group,
                    "timescale_ms": window / MS,
                    "windows": len(pkts),
                    "pkts_mean": mean,
                    "idc_pkts": pkts.var() / mean if mean > 0 else np.nan,
                    "idc_bytes": octets.var() / mean_bytes if mean_bytes > 0 else np.nan,
                    "peak_to_mean": pkts.max() / mean if mean > 0 else np.nan,
                }
            )
    return pd.DataFrame(
        rows, columns=[by, "timescale_ms", "windows", "pkts_mean", "idc_pkts", "idc_bytes", "peak_to_mean"]
    )


def hurst(curve: pd.DataFrame, by: str) -> pd.Series:
    """Per group, H = (1 + slope) / 2 of the least-squares line through log IDC(T) against log T
    (packets); NaN with fewer than MIN_POINTS timescales of positive IDC."""

    def fit(part: pd.DataFrame) -> float:
        usable = part[part["idc_pkts"] > 0]
        if len(usable) < MIN_POINTS:
            return np.nan
        slope = np.polyfit(np.log(usable["timescale_ms"]), np.log(usable["idc_pkts"]), 1)[0]
        return float((1 + slope) / 2)

    return curve.groupby(by, observed=True)[["timescale_ms", "idc_pkts"]].apply(fit).rename("hurst")


def on_off(packets: pd.DataFrame, by: str, gap_ns: int = BURST_GAP_NS) -> pd.DataFrame:
    """Per group, every ON period (packets no more than `gap_ns` apart; a lone packet lasts 0 ns) and
    every OFF period (the gap between two ON periods): group, state, duration_ns."""
    ordered = packets[[by, "ts_ns"]].dropna().sort_values([by, "ts_ns"])
    gap = ordered.groupby(by, observed=True)["ts_ns"].diff()
    starts = gap.isna() | (gap > gap_ns)
    train = starts.cumsum()
    on = ordered.groupby(train).agg(group=(by, "first"), start=("ts_ns", "min"), end=("ts_ns", "max"))
    off = gap[starts & gap.notna()]
    return pd.concat(
        [
            pd.DataFrame({by: on["group"], "state": "on", "duration_ns": on["end"] - on["start"]}),
            pd.DataFrame({by: ordered.loc[off.index, by], "state": "off", "duration_ns": off}),
        ],
        ignore_index=True,
    ).astype({"duration_ns": "int64"})


LAB = "lab (each packet once)"


def summary(captured: pd.DataFrame, once: pd.DataFrame, tasks: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The variance-time curves during the measured tasks of every link (`node/iface`) and node, from each
    capture point's own packets (`captured`), and of the whole lab with each packet once (`once`); per
    group its Hurst estimate, peak-to-mean at 10 ms and 1 s, and ON/OFF period medians and p90s."""
    measured = tasks[~tasks["warmup"]]
    if measured.empty or captured.empty:
        return pd.DataFrame(), pd.DataFrame()
    start_ns, end_ns = int(measured["start_ns"].min()), int(measured["end_ns"].max())
    during = captured[(captured["ts_ns"] >= start_ns) & (captured["ts_ns"] < end_ns)]
    groups = pd.concat(
        [
            during.assign(group="link " + during["node"].astype(str) + "/" + during["iface"].astype(str)),
            during.assign(group="node " + during["node"].astype(str)),
            once.loc[(once["ts_ns"] >= start_ns) & (once["ts_ns"] < end_ns), ["ts_ns", "wire_len"]].assign(group=LAB),
        ],
        ignore_index=True,
    )
    curve = dispersion(groups, "group", start_ns, end_ns)
    periods = on_off(groups, "group")
    spans = periods.groupby(["group", "state"])["duration_ns"]
    per_group = pd.concat(
        [
            hurst(curve, "group"),
            curve[curve["timescale_ms"] == 10].set_index("group")["peak_to_mean"].rename("peak_to_mean_10ms"),
            curve[curve["timescale_ms"] == 1000].set_index("group")["peak_to_mean"].rename("peak_to_mean_1s"),
            (spans.median().unstack() / MS).add_suffix("_ms_p50"),
            (spans.quantile(0.9).unstack() / MS).add_suffix("_ms_p90"),
        ],
        axis=1,
    )
    per_group.index.name = "group"
    return curve, per_group.reset_index()
