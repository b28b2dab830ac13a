"""Issue 3's acceptance checks, computed from the rows of ``headway bench rtc``.

Pure functions over the row dicts (no torch), used by ``benchmarks.rtc`` at the end of a
sweep (printed to stderr and written to ``DIR/rtc_acceptance.json``) and by the docs.
Every check reports the numbers it compared, so a miss can be diagnosed from the output.
"""

from __future__ import annotations

import math
from statistics import mean


def wilson_half_width(successes: int, n: int, z: float = 1.96) -> float:
    """The larger distance from the observed rate to a bound of the 95% Wilson interval."""
    if n == 0:
        return float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(abs(centre + half - p), abs(p - (centre - half)))


def _rate(rows: list[dict], strategy: str, d: int) -> dict[str, float]:
    return {r["task"]: r["solve_rate"] for r in rows if r["strategy"] == strategy and r["d"] == d}


def _avg(values: dict[str, float]) -> float | None:
    return mean(values.values()) if values else None


def acceptance(rows: list[dict], target_task: str = "whack") -> dict:
    """The checks of issue 3 on one policy family's rows. Averages are over the tasks
    present in the rows; per-task details accompany every average."""
    out: dict = {}
    sync0, naive4 = _rate(rows, "sync", 0), _rate(rows, "naive", 4)
    naive0, fut0, fut4 = _rate(rows, "naive", 0), _rate(rows, "rtc_future", 0), _rate(rows, "rtc_future", 4)
    if sync0 and naive4:
        drop = _avg(sync0) - _avg(naive4)
        out["naive_d4_vs_sync_d0"] = {
            "sync_d0": _avg(sync0), "naive_d4": _avg(naive4), "drop_points": 100 * drop,
            "per_task_drop_points": {t: 100 * (sync0[t] - naive4.get(t, float("nan"))) for t in sync0},
            "pass": drop >= 0.20,
        }
    if naive0 and naive4 and fut0 and fut4:
        naive_drop = _avg(naive0) - _avg(naive4)
        fut_drop = _avg(fut0) - _avg(fut4)
        out["rtc_future_drop_vs_naive_drop"] = {
            "naive_drop_points": 100 * naive_drop, "rtc_future_drop_points": 100 * fut_drop,
            "ratio": fut_drop / naive_drop if naive_drop else None,
            "pass": fut_drop <= 0.5 * naive_drop,
        }
    seams, solves = [], []
    for r in rows:
        if r["strategy"] != "rtc" or r["d"] < 1:
            continue
        naive = next((n for n in rows if n["strategy"] == "naive" and n["task"] == r["task"] and n["d"] == r["d"]), None)
        if naive is None:
            continue
        seams.append({"task": r["task"], "d": r["d"], "rtc": r["seam_jerk"], "naive": naive["seam_jerk"],
                      "lower": r["seam_jerk"] is not None and naive["seam_jerk"] is not None and r["seam_jerk"] < naive["seam_jerk"]})
        ci = max(r["ci95"], naive["ci95"])
        solves.append({"task": r["task"], "d": r["d"], "rtc": r["solve_rate"], "naive": naive["solve_rate"], "ci95": ci,
                       "ok": r["solve_rate"] >= naive["solve_rate"] - ci})
    if seams:
        by_d = {}
        for d in sorted({s["d"] for s in seams}):
            rs = [s for s in seams if s["d"] == d and s["rtc"] is not None and s["naive"] is not None]
            by_d[d] = {"rtc": mean(s["rtc"] for s in rs), "naive": mean(s["naive"] for s in rs)}
        out["rtc_seam_jerk_below_naive"] = {
            "per_task_pass": all(s["lower"] for s in seams),
            "task_average_pass": all(v["rtc"] < v["naive"] for v in by_d.values()),
            "task_average_by_d": by_d,
            "misses": [s for s in seams if not s["lower"]],
        }
        out["rtc_solve_not_below_naive_beyond_ci"] = {
            "pass": all(s["ok"] for s in solves),
            "misses": [s for s in solves if not s["ok"]],
        }
    target = [r for r in rows if r["task"] == target_task and r.get("reaction_ms") is not None]
    if target:
        per_d = []
        for d in sorted({r["d"] for r in target}):
            get = {r["strategy"]: r for r in target if r["d"] == d}
            if "rtc_future" in get and "sync" in get and "rtc" in get:
                fut, sync, rtc = get["rtc_future"], get["sync"], get["rtc"]
                per_d.append({
                    "d": d, "rtc_future_ms": fut["reaction_ms"], "sync_ms": sync["reaction_ms"],
                    "sync_over_rtc_future": sync["reaction_ms"] / fut["reaction_ms"],
                    "rtc_future_solve": fut["solve_rate"], "rtc_solve": rtc["solve_rate"],
                    "faster": fut["reaction_ms"] < sync["reaction_ms"],
                    "solve_not_lower": fut["solve_rate"] >= rtc["solve_rate"] - max(fut["ci95"], rtc["ci95"]),
                })
        out["target_change_reaction"] = {
            "task": target_task,
            "per_d": per_d,
            "pass_d_ge_1": all(p["faster"] and p["solve_not_lower"] for p in per_d if p["d"] >= 1),
        }
    return out
