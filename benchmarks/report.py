"""Printing and writing results: a text table, JSON, a markdown report and a PNG plot."""
import json
from pathlib import Path

from .analysis import REFERENCE
from .runner import GB

STAGE_COLUMNS = ("read", "encode", "sample", "decode", "write", "total")


def short_error(text, limit=70, prefix=""):
    """One short line for a table: allocation failures as 'cannot allocate N MB'."""
    import re
    text = text or ""
    m = re.search(r"tried to allocate (\d+) bytes", text)
    if m:
        return f"{prefix}cannot allocate {int(m.group(1)) / 2**20:.0f} MB"
    m = re.search(r"Tried to allocate ([\d.]+ [KMG]iB)", text)
    if m:
        return f"{prefix}CUDA cannot allocate {m.group(1)}"
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _s(value, digits=1):
    return "–" if value is None else f"{value:.{digits}f}"


def _gb(value):
    return "–" if value is None else f"{value / GB:.2f}"


def _x(value):
    return "–" if value is None else f"{value:.2f}×"


def result_rows(results, cuda=False):
    header = ["size", "MP", "mode", "status", *[f"{c} s" for c in STAGE_COLUMNS], "CPU s", "MP/s",
              "peak RSS GB", "working GB"] + (["cuda alloc GB", "cuda reserved GB"] if cuda else []) + ["n"]
    rows = []
    for r in results:
        if r["status"].startswith("ok"):
            sec = r["seconds"]
            row = [r["size"], f"{r['megapixels']:.2f}", r["config"], r["status"],
                   *[_s(sec[c], 2 if sec[c] is not None and sec[c] < 10 else 1) for c in STAGE_COLUMNS],
                   _s(r["cpu_seconds"]["total"]), _s(r["throughput_mps"], 3), _gb(r["peak_rss_bytes"]),
                   _gb(r["working_rss_bytes"])]
            if cuda:
                row += [_gb(r.get("cuda_max_allocated_bytes")), _gb(r.get("cuda_max_reserved_bytes"))]
            row.append(str(r["repeats"]))
        else:
            note = r["status"]
            if r.get("error"):
                note = r["error"] if r["error"].startswith(note) else f"{note}: {short_error(r['error'])}"
            row = [r["size"], f"{r['megapixels']:.2f}", r["config"], short_error(note, 90),
                   *["–"] * len(STAGE_COLUMNS),
                   "–", "–", _gb(r.get("peak_rss_bytes")) if r["status"] in ("oom", "oom-killed") else "–", "–"]
            if cuda:
                row += ["–", "–"]
            row.append("0")
        rows.append(row)
    return header, rows


def ratio_rows(ratios):
    header = ["size", "mode", "time ×", "paired time ×", "best-of time ×", "CPU time ×", "encode ×", "sample ×",
              "decode ×", "CPU enc/samp/dec ×", "peak RSS ×", "working ×", "check"]
    rows = []
    for e in ratios:
        if "note" in e:
            rows.append([e["size"], e["config"], short_error(e["note"], 90, prefix=e["note"].split(":")[0] + ": ")]
                        + ["–"] * 10)
            continue
        st = e["stage_time_ratio"]
        check = e.get("check")
        check_text = "–" if not check else ("PASS" if check["passed"] else "FAIL") + "".join(
            f" {k[:-3]}:{'ok' if v else 'over'}" for k, v in check.items() if k.endswith("_ok"))
        rows.append([e["size"], e["config"], _x(e["time_ratio"]), _x(e["time_ratio_paired"]),
                     _x(e.get("time_ratio_best")),
                     _x(e["cpu_time_ratio"]), _x(st["encode"]), _x(st["sample"]), _x(st["decode"]),
                     "/".join("–" if v is None else f"{v:.2f}"
                              for v in (e.get("stage_cpu_time_ratio") or {}).values()) or "–",
                     _x(e["peak_rss_ratio"]), _x(e["working_rss_ratio"]), check_text])
    return header, rows


def text_table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(out)


def markdown_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(out)


def write_json(path, report):
    path = Path(path)
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(path)
    return path


def markdown(report):
    m = report["machine"]
    s = report["settings"]
    cuda = str(s["device"]).startswith("cuda")
    loads = [r.get("loadavg_before", [0])[0] for r in report["runs"] if r.get("loadavg_before")]
    lines = [
        f"# tilediff benchmark — {m['slug']}, {report['created']}",
        "",
        f"`{report['command']}`",
        "",
        f"- machine: {m['cpu']} × {m['cpu_count']} cores, {m['mem_total_bytes'] / GB:.1f} GB RAM, "
        f"device {m['device_name']}; torch {m['torch']} ({m['torch_threads']} threads), python {m['python']}",
        f"- model: {report['model']['description']}",
        f"- steps {s['steps']}, sampler {s['sampler']}, precision {s['precision']}, repeats {s['repeat']} "
        f"(each run in a fresh process after a {s['warmup']} warm-up; times are medians, peak RSS the "
        f"largest of the repeats), modes {', '.join(s['configs'])}",
        f"- load average (1 min) before the runs: {min(loads):.1f} – {max(loads):.1f}" if loads else "- load: –",
        "- stage times: read = opening the synthetic tiled 8-bit TIFF as a region source; "
        "encode/sample/decode from the engine's stats; write = the band sink's writes (8-bit TIFF, atomic); "
        "total = read → write. Peak RSS = the child's own VmHWM (ru_maxrss carries the parent's over exec); "
        "working = peak − resident "
        "set after model load and warm-up.",
    ]
    allocators = {json.dumps(r["host_allocator"], sort_keys=True) for r in report["runs"] if r.get("host_allocator")}
    if allocators:
        lines.append("- host allocator (tilediff.host_memory, every mode alike): " + "; ".join(sorted(allocators)))
    for note in report.get("notes", []):
        lines.append(f"- note: {note}")
    lines += ["", "## Results", "", markdown_table(*result_rows(report["results"], cuda))]
    if report["ratios"]:
        lines += ["", "## Tiled / reference (same run)", "", markdown_table(*ratio_rows(report["ratios"]))]
    if report.get("check"):
        c = report["check"]
        lines += ["", f"**Check** (peak memory ≤ {c['max_memory_ratio']}× and time ≤ {c['max_time_ratio']}× the "
                      f"reference's, paired time ratio where there is one): "
                      f"**{'PASS' if c['passed'] else 'FAIL'}** ({c['compared']} size/mode pairs compared)"]
    plans = [(r["size"], r["config"], r["plan"]) for r in report["results"] if r.get("plan")]
    if plans:
        lines += ["", "## Plans", ""]
        for size, config, plan in plans:
            lines.append(f"- {size} {config}: " + plan.replace("\n", "; "))
    stage_rows = [r for r in report["results"] if r.get("stage_peak_rss_bytes")]
    if stage_rows:
        header = ["size", "mode", "baseline GB", *[f"{s} peak GB" for s in ("read", "encode", "sample", "decode",
                                                                              "write")]]
        rows = [[r["size"], r["config"], _gb(r["baseline_rss_bytes"]),
                 *[_gb(r["stage_peak_rss_bytes"].get(s)) for s in ("read", "encode", "sample", "decode", "write")]]
                for r in stage_rows]
        lines += ["", "## Resident set by stage (sampled every 20 ms)", "", markdown_table(header, rows)]
    if report.get("scaling"):
        sc = report["scaling"]
        lines += ["", "## Scaling", ""]
        header = ["mode", "memory MB/MP", "memory at 0 MP (MB)", "r²", "time s/MP", "time at 0 MP (s)", "r²"]
        rows = []
        for config, fit in sc["fits"].items():
            mem, t = fit.get("peak_rss_mb"), fit.get("total_seconds")
            rows.append([config, _s(mem and mem["slope_per_mp"], 0), _s(mem and mem["intercept"], 0),
                         _s(mem and mem["r2"], 3), _s(t and t["slope_per_mp"], 2), _s(t and t["intercept"], 1),
                         _s(t and t["r2"], 3)])
        lines += [markdown_table(header, rows), "",
                  f"Canvas floor (three float32 images: decoded file, input tensor, output; 8-bit file buffers; "
                  f"latent and deepest canvases): "
                  f"{sc['canvas_floor_mb_per_mp']:.0f} MB/MP.", ""]
        lines += [f"- {v}" for v in sc["verdict"]]
    if report.get("plot"):
        lines += ["", f"![memory and time against megapixels]({Path(report['plot']).name})"]
    return "\n".join(lines) + "\n"


def plot(path, report):
    """Peak RSS and total time against megapixels, one line per mode; None when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    results = report["results"]
    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    for config in dict.fromkeys(r["config"] for r in results):
        ok = sorted((r for r in results if r["config"] == config and r["status"].startswith("ok")),
                    key=lambda r: r["megapixels"])
        style = dict(marker="o", linestyle="--" if config == REFERENCE else "-",
                     label=f"{config} (reference)" if config == REFERENCE else config)
        if ok:
            mps = [r["megapixels"] for r in ok]
            line, = ax_mem.plot(mps, [r["peak_rss_bytes"] / GB for r in ok], **style)
            ax_time.plot(mps, [r["seconds"]["total"] for r in ok], color=line.get_color(), **style)
        for r in results:
            if r["config"] == config and not r["status"].startswith("ok"):
                y = (r.get("predicted_peak_bytes") or r.get("peak_rss_bytes") or 0) / GB
                ax_mem.plot([r["megapixels"]], [y], marker="x", color="red", markersize=9)
                ax_mem.annotate(r["status"].split(":")[0], (r["megapixels"], y), fontsize=7,
                                textcoords="offset points", xytext=(4, 4))
    total = report["machine"].get("mem_total_bytes")
    highest = max([r.get("peak_rss_bytes") or 0 for r in results]
                  + [r.get("predicted_peak_bytes") or 0 for r in results])
    if total and highest > 0.4 * total and not str(report["settings"]["device"]).startswith("cuda"):
        ax_mem.axhline(total / GB, color="grey", linewidth=0.8, linestyle=":")
        ax_mem.annotate("host RAM", (min(r["megapixels"] for r in results), total / GB), fontsize=7,
                        color="grey", textcoords="offset points", xytext=(0, -10))
    ax_mem.set(xlabel="megapixels", ylabel="peak resident set (GB)", title="peak memory")
    ax_time.set(xlabel="megapixels", ylabel="seconds (read → write)",
                title=f"time, {report['settings']['steps']} steps")
    for ax in (ax_mem, ax_time):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"tilediff, {report['model']['kind']} model, {report['machine']['slug']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
