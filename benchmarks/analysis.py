"""From raw runs to results: medians per (size, mode), tiled/reference ratios, scaling fits, checks.

Times are medians over the repeats; peak memory is the largest peak over the repeats. Ratios are
taken twice: of the medians, and paired (tiled repeat i over reference repeat i, which ran right
after or before it, then the median), the second being the less sensitive to a load that drifts.
"""
import statistics

from .runner import MB, fit_line

GIB = 1 << 30
REFERENCE = "whole"
TIME_FIELDS = ("read", "encode", "sample", "decode", "write", "engine", "total")


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _max(values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


def aggregate(runs, steps):
    """runs (dicts with size, config, megapixels, status, …) → one result per (size, config), in order."""
    groups = {}
    for run in runs:
        groups.setdefault((run["size"], run["config"]), []).append(run)
    results = []
    for (size, config), group in groups.items():
        first = group[0]
        ok = [r for r in group if r["status"] == "ok"]
        result = {"size": size, "width": first["width"], "height": first["height"],
                  "megapixels": first["megapixels"], "config": config, "mode": first["mode"],
                  "memory_budget": first.get("memory_budget"), "runs": len(group), "repeats": len(ok)}
        if not ok:
            bad = next((r for r in group if r["status"] != "skipped"), group[0])
            result.update({"status": bad["status"], "error": bad.get("error"),
                           "peak_rss_bytes": bad.get("peak_rss_bytes"),
                           "predicted_peak_bytes": bad.get("predicted_peak_bytes")})
            results.append(result)
            continue
        seconds = {f: _median([r["seconds"].get(f) for r in ok]) for f in TIME_FIELDS}
        seconds_min = {f: min(r["seconds"].get(f, float("inf")) for r in ok) for f in TIME_FIELDS}
        mp = result["megapixels"]
        stage_peaks = {}
        for r in ok:
            for stage, value in (r.get("stage_peak_rss_bytes") or {}).items():
                if value is not None:
                    stage_peaks[stage] = max(stage_peaks.get(stage, 0), value)
        peak = _max([r.get("peak_rss_bytes") for r in ok])
        baseline = _median([r.get("baseline_rss_bytes") for r in ok])
        result.update({
            "status": "ok" if len(ok) == len(group) else f"ok ({len(group) - len(ok)} of {len(group)} runs failed)",
            "seconds": seconds,
            "seconds_min": seconds_min,
            "seconds_all": [r["seconds"]["total"] for r in ok],
            "cpu_seconds": {k: _median([r.get("cpu_seconds", {}).get(k) for r in ok])
                            for k in ("read", "encode", "sample", "decode", "engine", "write", "total")},
            "sample_seconds_per_step": seconds["sample"] / steps if seconds["sample"] is not None else None,
            "throughput_mps": mp / seconds["total"] if seconds["total"] else None,
            "engine_throughput_mps": mp / seconds["engine"] if seconds["engine"] else None,
            "peak_rss_bytes": peak,
            "peak_rss_median_bytes": _median([r.get("peak_rss_bytes") for r in ok]),
            "baseline_rss_bytes": baseline,
            "working_rss_bytes": (peak - baseline) if peak is not None and baseline is not None else None,
            "polled_hwm_bytes": _max([r.get("polled_hwm_bytes") for r in ok]),
            "stage_peak_rss_bytes": stage_peaks,
            "cuda_max_allocated_bytes": _max([r.get("cuda_max_allocated_bytes") for r in ok]),
            "cuda_max_reserved_bytes": _max([r.get("cuda_max_reserved_bytes") for r in ok]),
            "output_finite": all(r.get("output_finite", False) for r in ok),
            "loadavg_1min": [r.get("loadavg_before", [None])[0] for r in ok],
            "plan": ok[0].get("plan"),
            "plan_fields": ok[0].get("plan_fields"),
        })
        results.append(result)
    return results


def _ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def ratios(results, runs, max_memory_ratio=None, max_time_ratio=None):
    """Tiled/reference ratios per size, for every non-reference configuration."""
    by_key = {(r["size"], r["config"]): r for r in results}
    out = []
    for r in results:
        if r["config"] == REFERENCE:
            continue
        ref = by_key.get((r["size"], REFERENCE))
        entry = {"size": r["size"], "megapixels": r["megapixels"], "config": r["config"]}
        if ref is None:
            entry["note"] = "reference not measured"
        elif not ref["status"].startswith("ok"):
            entry["note"] = (ref["error"] if (ref.get("error") or "").startswith(ref["status"])
                             else f"reference {ref['status']}" + (f": {ref['error']}" if ref.get("error") else ""))
        elif not r["status"].startswith("ok"):
            entry["note"] = f"tiled {r['status']}"
        if "note" in entry:
            out.append(entry)
            continue
        entry.update({
            "time_ratio": _ratio(r["seconds"]["total"], ref["seconds"]["total"]),
            "engine_time_ratio": _ratio(r["seconds"]["engine"], ref["seconds"]["engine"]),
            "stage_time_ratio": {s: _ratio(r["seconds"][s], ref["seconds"][s])
                                 for s in ("encode", "sample", "decode")},
            "cpu_time_ratio": _ratio(r["cpu_seconds"]["total"], ref["cpu_seconds"]["total"]),
            "stage_cpu_time_ratio": {s: _ratio(r["cpu_seconds"].get(s), ref["cpu_seconds"].get(s))
                                     for s in ("encode", "sample", "decode")},
            "time_ratio_paired": _paired(runs, r["size"], r["config"]),
            "time_ratio_best": _ratio(r["seconds_min"]["total"], ref["seconds_min"]["total"]),
            "peak_rss_ratio": _ratio(r["peak_rss_bytes"], ref["peak_rss_bytes"]),
            "working_rss_ratio": _ratio(r["working_rss_bytes"], ref["working_rss_bytes"]),
            "cuda_max_allocated_ratio": _ratio(r.get("cuda_max_allocated_bytes"), ref.get("cuda_max_allocated_bytes")),
            "cuda_max_reserved_ratio": _ratio(r.get("cuda_max_reserved_bytes"), ref.get("cuda_max_reserved_bytes")),
        })
        if max_memory_ratio is not None or max_time_ratio is not None:
            entry["check"] = check(entry, max_memory_ratio, max_time_ratio)
        out.append(entry)
    return out


def _paired(runs, size, config):
    """Median over repeats of tiled total / reference total of the same repeat."""
    ref = {r["repeat"]: r["seconds"]["total"] for r in runs
           if r["size"] == size and r["config"] == REFERENCE and r["status"] == "ok"}
    values = [r["seconds"]["total"] / ref[r["repeat"]] for r in runs
              if r["size"] == size and r["config"] == config and r["status"] == "ok" and r["repeat"] in ref]
    return statistics.median(values) if values else None


def check(entry, max_memory_ratio, max_time_ratio):
    """The issue's criteria: peak memory at most max_memory_ratio × the reference's, time at most
    max_time_ratio × (paired median ratio when there is one)."""
    result = {}
    if max_memory_ratio is not None:
        memory = entry.get("peak_rss_ratio")
        if entry.get("cuda_max_allocated_ratio") is not None:
            memory = entry["cuda_max_allocated_ratio"]
        result["memory_ratio"] = memory
        result["memory_limit"] = max_memory_ratio
        result["memory_ok"] = memory is not None and memory <= max_memory_ratio
    if max_time_ratio is not None:
        time_ratio = entry.get("time_ratio_paired") or entry.get("time_ratio")
        result["time_ratio"] = time_ratio
        result["time_limit"] = max_time_ratio
        result["time_ok"] = time_ratio is not None and time_ratio <= max_time_ratio
        # best of the repeats: on a loaded machine noise only adds time, so the fastest runs are
        # the closest to the intrinsic cost (reported beside the median, not used for 'passed')
        best = entry.get("time_ratio_best")
        result["time_ratio_best"] = best
        result["time_best_within_limit"] = best is not None and best <= max_time_ratio
    result["passed"] = all(v for k, v in result.items() if k.endswith("_ok"))
    return result


def scaling(results, canvas_floor_bytes_per_pixel):
    """Straight-line fits of peak memory and time against megapixels, per configuration, and a verdict."""
    fits = {}
    for config in dict.fromkeys(r["config"] for r in results):
        ok = [r for r in results if r["config"] == config and r["status"].startswith("ok")]
        if len({r["megapixels"] for r in ok}) < 2:
            continue
        mps = [r["megapixels"] for r in ok]
        fit = {"sizes": [r["size"] for r in ok], "megapixels": mps}
        for name, values, scale in (
                ("peak_rss_mb", [r["peak_rss_bytes"] for r in ok], MB),
                ("working_rss_mb", [r["working_rss_bytes"] for r in ok], MB),
                ("total_seconds", [r["seconds"]["total"] for r in ok], 1),
                ("engine_seconds", [r["seconds"]["engine"] for r in ok], 1)):
            if any(v is None for v in values):
                continue
            a, b, r2 = fit_line(mps, [v / scale for v in values])
            fit[name] = {"intercept": a, "slope_per_mp": b, "r2": r2, "values": [v / scale for v in values]}
        fit["plans"] = [{"size": r["size"], "skips": (r.get("plan_fields") or {}).get("skips"),
                         "noise_mode": (r.get("plan_fields") or {}).get("noise_mode"),
                         "compressor_tile": (r.get("plan_fields") or {}).get("compressor_tile"),
                         "expected_peak_gb": ((r.get("plan_fields") or {}).get("expected_peak") or float("nan")) / GIB,
                         "budget_gb": ((r.get("plan_fields") or {}).get("budget") or float("nan")) / GIB} for r in ok]
        fits[config] = fit
    floor_mb = canvas_floor_bytes_per_pixel * 1e6 / MB    # bytes per pixel → MB (2^20 B) per 10^6 pixels
    return {"fits": fits, "canvas_floor_mb_per_mp": floor_mb, "verdict": verdict(fits, floor_mb)}


def verdict(fits, floor_mb):
    lines = []
    ref = fits.get(REFERENCE)
    ref_mem = ref["peak_rss_mb"]["slope_per_mp"] if ref and "peak_rss_mb" in ref else None
    ref_time = ref["total_seconds"]["slope_per_mp"] if ref and "total_seconds" in ref else None
    if ref_mem is not None:
        lines.append(f"reference (whole, {len(ref['megapixels'])} sizes): memory {ref_mem:.0f} MB/MP "
                     f"(r² {ref['peak_rss_mb']['r2']:.3f}), time {ref_time:.2f} s/MP "
                     f"(r² {ref['total_seconds']['r2']:.3f})")
    for config, fit in fits.items():
        if config == REFERENCE or "peak_rss_mb" not in fit:
            continue
        mem = fit["peak_rss_mb"]
        slope = mem["slope_per_mp"]
        excess = slope - floor_mb
        text = (f"{config} ({len(fit['megapixels'])} sizes): memory {slope:.0f} MB/MP (r² {mem['r2']:.3f}, "
                f"{mem['intercept']:.0f} MB at 0 MP)"
                + (f", {ref_mem / slope:.1f}× less per MP than the reference" if ref_mem and slope > 0 else "")
                + f"; the pipeline's image/latent canvases account for {floor_mb:.0f} MB/MP → ")
        if excess <= 0.5 * floor_mb:
            text += f"flat in image size apart from the canvases ({max(excess, 0):.0f} MB/MP above them)"
        else:
            largest = max(fit["plans"], key=lambda p: fit["megapixels"][fit["sizes"].index(p["size"])])
            text += (f"NOT flat: {excess:.0f} MB/MP above the canvases (the planner spends the budget on "
                     f"what is faster where it has room: canvases in RAM, the whole-canvas sampler; at "
                     f"{largest['size']} it expects {largest.get('expected_peak_gb', float('nan')):.2f} GB of "
                     f"{largest.get('budget_gb', float('nan')):.2f} GB; "
                     "a lower --memory-budget bounds it)")
        t = fit.get("total_seconds")
        if t:
            linear = t["r2"] >= 0.95
            text += (f". Time {t['slope_per_mp']:.2f} s/MP (r² {t['r2']:.3f}): "
                     + ("linear in pixels" if linear else "not a clean line (noisy machine or fixed costs)")
                     + (f", {t['slope_per_mp'] / ref_time:.2f}× the reference's s/MP" if ref_time else ""))
        lines.append(text)
    return lines
