#!/usr/bin/env python3
"""Report of one bench/bench.sh run: report.md and chart.svg in its directory.

    python3 bench/report.py bench/results/<run>

Reads what bench.sh left there: meta.kv (machine, tools, commit, settings),
runs/r<round>-<scenario>.kv (one per measured run: CPU samples, the raw
output's name, the scenario's own figures) and the raw outputs (wrk with the
BENCH line of bench/lib.lua, sellout_watch.py's SELLOUT line, redis-benchmark's
summary, k6's --summary-export JSON). Prints the targets table. Python 3
standard library only; it can be re-run on a results directory at any time.
"""

import html
import json
import math
import re
import sys
from pathlib import Path

ORDER = ["ceiling", "checkout", "sellout", "postsellout", "purchase", "redis_p1", "redis_p16", "mixed", "k6"]
NAMES = {
    "ceiling": "ceiling (bare responder)",
    "checkout": "checkout crowd",
    "sellout": "sellout",
    "postsellout": "post-sellout crowd",
    "purchase": "purchase path",
    "redis_p1": "redis-benchmark -P 1",
    "redis_p16": "redis-benchmark -P 16",
    "mixed": "mixed flow",
    "k6": "k6 flash crowd",
}
SHORT = {
    "ceiling": "ceiling",
    "checkout": "checkout",
    "sellout": "sellout",
    "postsellout": "post-sellout",
    "purchase": "purchase",
    "redis_p1": "redis -P1",
    "redis_p16": "redis -P16",
    "mixed": "mixed",
    "k6": "k6",
}


def read_kv(path: Path) -> dict:
    out = {}
    for line in path.read_text(errors="replace").splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def num(v, default=None):
    try:
        x = float(v)
        return x if math.isfinite(x) else default
    except (TypeError, ValueError):
        return default


def parse_wrk(text: str) -> dict:
    """The BENCH line of bench/lib.lua, else wrk's own report."""
    r = {}
    for line in text.splitlines():
        if line.startswith("BENCH "):
            for part in line.split()[1:]:
                k, _, v = part.partition("=")
                r[k] = v
    if "rps" not in r:
        m = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
        if m:
            r["rps"] = m.group(1)
        m = re.search(r"^\s*(\d+) requests in", text, re.M)
        if m:
            r["requests"] = m.group(1)
    out = {
        "rps": num(r.get("rps")),
        "requests": num(r.get("requests")),
        "p50_us": num(r.get("lat_p50_us")),
        "p90_us": num(r.get("lat_p90_us")),
        "p99_us": num(r.get("lat_p99_us")),
        "p999_us": num(r.get("lat_p999_us")),
        "max_us": num(r.get("lat_max_us")),
        "non2xx": num(r.get("non2xx")),
        "statuses": {int(k[1:]): int(float(v)) for k, v in r.items() if re.fullmatch(r"s\d{3}", k)},
        "counters": {k[2:]: int(float(v)) for k, v in r.items() if k.startswith("c_")},
        "socket_errors": sum(int(float(r.get("err_" + e, 0))) for e in ("connect", "read", "write", "timeout")),
    }
    return out


def parse_sellout(text: str) -> dict:
    for line in text.splitlines():
        if line.startswith("SELLOUT "):
            return dict(p.partition("=")[::2] for p in line.split()[1:])
    return {}


def parse_redis_benchmark(text: str) -> dict:
    out = {}
    m = re.search(r"throughput summary:\s*([\d.]+) requests per second", text)
    if m:
        out["rps"] = float(m.group(1))
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "latency summary" in line and i + 2 < len(lines):
            names = lines[i + 1].split()
            values = lines[i + 2].split()
            lat = {n: num(v) for n, v in zip(names, values)}
            for key, name in (("p50_us", "p50"), ("p99_us", "p99"), ("max_us", "max")):
                if lat.get(name) is not None:
                    out[key] = lat[name] * 1000.0
            break
    return out


def parse_k6(summary: dict) -> dict:
    metrics = summary.get("metrics", {})
    out = {"routes": {}}
    reqs = metrics.get("http_reqs", {})
    out["requests"] = num(reqs.get("count"))
    out["rps"] = num(reqs.get("rate"))

    def trend(m):
        return {
            "p50_us": num(m.get("med"), 0) * 1000 if "med" in m else None,
            "p90_us": num(m.get("p(90)"), 0) * 1000 if "p(90)" in m else None,
            "p99_us": num(m.get("p(99)"), 0) * 1000 if "p(99)" in m else None,
            "p999_us": num(m.get("p(99.9)"), 0) * 1000 if "p(99.9)" in m else None,
            "max_us": num(m.get("max"), 0) * 1000 if "max" in m else None,
        }

    out.update(trend(metrics.get("http_req_duration", {})))
    for name, m in metrics.items():
        # per route: k6/lib/flashsale.js's latency_<route> trends (or a name tag)
        mm = re.fullmatch(r"http_req_duration\{name:([^}]+)\}", name) or re.fullmatch(r"latency_(\w+)", name)
        if mm and isinstance(m, dict):
            out["routes"][mm.group(1)] = trend(m)
    failed = metrics.get("http_req_failed", {})
    out["failed_rate"] = num(failed.get("value"))
    out["dropped"] = num(metrics.get("dropped_iterations", {}).get("count"), 0)
    checks = metrics.get("checks", {})
    out["checks_rate"] = num(checks.get("value"))
    out["failed_thresholds"] = sorted(
        f"{name}: {t}" for name, m in metrics.items() if isinstance(m, dict)
        for t, crossed in (m.get("thresholds") or {}).items() if crossed
    )
    out["counters"] = {
        k: int(v.get("count", 0))
        for k, v in metrics.items()
        if isinstance(v, dict) and "count" in v and k not in ("http_reqs", "iterations", "data_sent", "data_received")
    }
    return out


def load_runs(d: Path) -> list:
    runs = []
    for p in sorted((d / "runs").glob("r*-*.kv")):
        kv = read_kv(p)
        run = {"round": int(kv.get("round", 0)), "scenario": kv.get("scenario", p.stem), "kv": kv}
        raw = d / kv.get("raw", "")
        text = raw.read_text(errors="replace") if kv.get("raw") and raw.is_file() else ""
        kind = kv.get("kind")
        if kind == "wrk":
            run.update(parse_wrk(text))
            if kv.get("watch"):
                w = d / kv["watch"]
                run["sellout"] = parse_sellout(w.read_text(errors="replace")) if w.is_file() else {}
                # the rate until the sellout, counted by the server (wrk's also
                # counts the cheap answers between the sellout and its stop)
                run["wrk_rps"] = run.get("rps")
                if num(run["sellout"].get("server_rps")) is not None:
                    run["rps"] = num(run["sellout"]["server_rps"])
        elif kind == "redis-benchmark":
            run.update(parse_redis_benchmark(text))
            run["requests"] = num(kv.get("requests_sent"))
        elif kind == "k6":
            sp = d / kv.get("summary", "")
            if kv.get("summary") and sp.is_file():
                try:
                    run.update(parse_k6(json.loads(sp.read_text())))
                except (ValueError, AttributeError):
                    pass
        # CPU: ticks of the server / Redis / Postgres, load generator seconds
        hz = num(kv.get("hz"), 100.0)
        wall = num(kv.get("wall_s"), 0.0)
        cpu = {
            "server": num(kv.get("server_ticks"), 0) / hz,
            "redis": num(kv.get("redis_ticks"), 0) / hz,
            "postgres": num(kv.get("pg_ticks"), 0) / hz,
            "loadgen": num(kv.get("loadgen_cpu_s"), 0),
        }
        in_procs = num(kv.get("proc_ticks"), 0) / hz
        cpu["other"] = max(0.0, in_procs - sum(cpu.values()))
        cpu["irq"] = num(kv.get("irq_ticks"), 0) / hz
        cpu["steal"] = num(kv.get("steal_ticks"), 0) / hz
        run["cpu_s"] = cpu
        run["wall_s"] = wall
        runs.append(run)
    runs.sort(key=lambda r: (r["round"], ORDER.index(r["scenario"]) if r["scenario"] in ORDER else 99))
    return runs


# ---------------------------------------------------------------------------
# formatting


def f_int(x):
    return "–" if x is None else f"{x:,.0f}"


def f_us(x):
    if x is None:
        return "–"
    if x >= 10_000:
        return f"{x / 1000:,.1f} ms"
    if x >= 1000:
        return f"{x / 1000:,.2f} ms"
    return f"{x:,.0f} µs"


def f_share(part, whole):
    """part of whole as a percentage, or '?' when either is unknown."""
    return f"{part / whole * 100:.1f}%" if whole and part is not None else "?"


def f_ratio(x):
    return "–" if x is None else f"{x:.3f}"


def statuses_text(st: dict) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(st.items())) if st else "–"


def by_round(runs):
    out = {}
    for r in runs:
        out.setdefault(r["round"], {})[r["scenario"]] = r
    return out


def ratio(a, b):
    if a is None or not b:
        return None
    return a / b


# ---------------------------------------------------------------------------
# targets


def verdict(results):
    """results: list of True/False/None per round."""
    known = [x for x in results if x is not None]
    if not known:
        return "not measured"
    if all(known):
        return "**met**" if len(known) == len(results) else f"**met** ({len(known)} of {len(results)} rounds measured)"
    if not any(known):
        return "**not met**"
    return f"met in {sum(known)} of {len(known)} rounds"


def targets(runs, meta):
    rounds = by_round(runs)
    conns = meta.get("set_CONNECTIONS", "?")
    rows = []

    def per_round(fn):
        figs, oks = [], []
        for rnd in sorted(rounds):
            fig, ok = fn(rounds[rnd])
            if fig is not None:
                figs.append(f"r{rnd}: {fig}")
            oks.append(ok)
        return "<br>".join(figs) or "–", verdict(oks)

    def t1(rs):
        c, ce = rs.get("checkout"), rs.get("ceiling")
        if not c:
            return None, None
        q = ratio(c.get("rps"), ce.get("rps") if ce else None)
        p99 = c.get("p99_us")
        ok = None if q is None or p99 is None else (q >= 0.5 and p99 < 5000)
        return f"{f_ratio(q)} × ceiling ({f_int(c.get('rps'))} / {f_int(ce.get('rps') if ce else None)} req/s), p99 {f_us(p99)}", ok

    fig, v = per_round(t1)
    note = "" if conns == "64" else f" (measured at {conns} connections, not 64)"
    rows.append(("1", "checkout crowd ≥ 0.5 × ceiling req/s, and checkout p99 < 5 ms at 64 connections" + note, fig, v))

    def t2(rs):
        c, ce = rs.get("postsellout"), rs.get("ceiling")
        if not c:
            return None, None
        q = ratio(c.get("rps"), ce.get("rps") if ce else None)
        n503 = c.get("statuses", {}).get(503, 0)
        shed = f"; {n503:,} answered 503" if n503 else ""
        return f"{f_ratio(q)} × ceiling ({f_int(c.get('rps'))} req/s{shed})", None if q is None else q >= 0.9

    fig, v = per_round(t2)
    rows.append(("2", "post-sellout crowd ≥ 0.9 × ceiling req/s", fig, v))

    def t3(rs):
        p, rb = rs.get("purchase"), rs.get("redis_p16")
        if not p:
            return None, None
        q = ratio(p.get("rps"), rb.get("rps") if rb else None)
        return f"{f_ratio(q)} × redis-benchmark -P 16 ({f_int(p.get('rps'))} / {f_int(rb.get('rps') if rb else None)} req/s)", None if q is None else q >= 0.8

    fig, v = per_round(t3)
    label = "purchase path ≥ 0.8 × redis-benchmark -P 16 req/s of lua/purchase.lua"
    rows.append(("3", label, fig, v))

    def t4(rs):
        s = rs.get("sellout")
        if not s:
            return None, None
        ms = num(s.get("sellout", {}).get("sellout_ms"))
        if ms is None:
            sold = s.get("sellout", {}).get("sold", "?")
            return f"not sold out ({sold} sold)", False
        return f"{ms:,.0f} ms at {f_int(s.get('rps'))} req/s", ms < 1000

    fig, v = per_round(t4)
    rows.append(("4", f"{meta.get('set_SALE_ITEMS', '10000')} items sold out in < 1 s of crowd", fig, v))

    def t5(rs):
        c = rs.get("checkout")
        if not c:
            return None, None
        kv = c["kv"]
        drained = kv.get("drained") == "1"
        s503 = c.get("statuses", {}).get(503, 0) + int(num(kv.get("writer_queue_full"), 0))
        rows_ = num(kv.get("checkout_rows"))
        answered = num(kv.get("checkouts_answered"))
        ok = drained and s503 == 0 and rows_ is not None and rows_ == answered
        drain = f"drained in {kv.get('drain_ms')} ms" if drained else "did not drain"
        return (f"{drain}; 503: {s503}; rows {f_int(rows_)} / answered {f_int(answered)}", ok)

    fig, v = per_round(t5)
    rows.append(("5", "the writer keeps up with the checkout crowd: queue drains, no 503 overloaded, "
                      "rows in checkouts = checkouts answered", fig, v))

    # CPU per checkout of each process against the bare responder's CPU per
    # request in the same round (the host's speed cancels out of the ratio).
    def cpu_per_request(r, part):
        if not r or not r.get("requests"):
            return None
        return r["cpu_s"][part] / r["requests"] * 1e6

    for n, part, name, bound in (("6", "redis", "Redis", 1.6), ("7", "server", "server", 1.4),
                                 ("8", "postgres", "Postgres", 0.8)):
        def t_cpu(rs, part=part, bound=bound):
            us = cpu_per_request(rs.get("checkout"), part)
            bare = cpu_per_request(rs.get("ceiling"), "server")
            q = ratio(us, bare)
            if us is None:
                return None, None
            bare_txt = "–" if bare is None else f"{bare:.1f}"
            return f"{f_ratio(q)} × ({us:.1f} / {bare_txt} µs)", None if q is None else q <= bound

        fig, v = per_round(t_cpu)
        rows.append((n, f"{name} CPU per checkout ≤ {bound} × the bare responder's CPU per request", fig, v))
    return rows


# ---------------------------------------------------------------------------
# chart


LEGEND_W = 150  # room right of each panel for its legend


def scale(values, log, extra=()):
    """(y of a value in 0..1 from the bottom, ticks) for a panel's values."""
    flat = [v for v in list(values) + list(extra) if v]
    if log:
        lo = 10 ** math.floor(math.log10(min(flat)))
        hi = 10 ** math.ceil(math.log10(max(flat)))
        if hi <= lo:
            hi = lo * 10
        ticks, t = [], lo
        while t <= hi * 1.0001:
            ticks.append(t)
            t *= 10
        return (lambda v: (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))), ticks
    top = max(flat) * 1.15
    mag = 10 ** math.floor(math.log10(top))
    step = next(s * mag for s in (0.1, 0.2, 0.25, 0.5, 1, 2, 2.5, 5, 10) if top / (s * mag) <= 6)
    hi = math.ceil(top / step) * step
    return (lambda v: v / hi), [i * step for i in range(int(round(hi / step)) + 1)]


def axes(x0, y0, w, h, title, note, ticks, frac, unit):
    el = [f'<text x="{x0}" y="{y0 - 28}" font-size="15" font-weight="bold">{html.escape(title)}</text>']
    if note:
        el.append(f'<text x="{x0}" y="{y0 - 12}" font-size="11" fill="#555">{html.escape(note)}</text>')
    for t in ticks:
        y = y0 + h - frac(t) * h
        el.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" stroke="#ddd"/>')
        el.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{fmt_tick(t, unit)}</text>')
    el.append(f'<line x1="{x0}" y1="{y0 + h}" x2="{x0 + w}" y2="{y0 + h}" stroke="#333"/>')
    return el


def legend(x, y, series, colors, extra=()):
    el = []
    for si, s in enumerate(series):
        ly = y + si * 16
        el.append(f'<rect x="{x}" y="{ly}" width="12" height="12" fill="{colors[si % len(colors)]}"/>')
        el.append(f'<text x="{x + 16}" y="{ly + 10}" font-size="11">{html.escape(s)}</text>')
    for i, (label, style) in enumerate(extra):
        ly = y + (len(series) + i) * 16
        el.append(f'<line x1="{x}" y1="{ly + 6}" x2="{x + 12}" y2="{ly + 6}" {style}/>')
        el.append(f'<text x="{x + 16}" y="{ly + 10}" font-size="11">{html.escape(label)}</text>')
    return el


TARGET_STYLE = 'stroke="#c00" stroke-width="2" stroke-dasharray="5,3"'


def svg_bars(x0, y0, w, h, title, note, groups, series, values, colors, log=False, unit="",
             targets=None, target_label="target", sublabels=None):
    """Grouped bars: values[g][s] (None = no bar); targets[g] draws a dashed
    line across group g at that value; sublabels[g] is a second line under
    the group's name. Returns SVG elements."""
    flat = [v for row in values for v in row if v]
    if not flat:
        return [f'<text x="{x0}" y="{y0 - 28}" font-size="15" font-weight="bold">{html.escape(title)}</text>',
                f'<text x="{x0 + w / 2}" y="{y0 + h / 2}" text-anchor="middle">no data</text>']
    tvals = [t for t in (targets or []) if t]
    frac, ticks = scale(flat, log, tvals)
    el = axes(x0, y0, w, h, title, note, ticks, frac, unit)
    gw = w / max(1, len(groups))
    bw = min(30.0, gw * 0.8 / max(1, len(series)))
    for gi, g in enumerate(groups):
        gx = x0 + gi * gw + (gw - bw * len(series)) / 2
        for si, _ in enumerate(series):
            v = values[gi][si]
            if not v:
                continue
            y = y0 + h - frac(v) * h
            x = gx + si * bw
            el.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw - 2:.1f}" height="{y0 + h - y:.1f}" '
                      f'fill="{colors[si % len(colors)]}"><title>{html.escape(g)} / {html.escape(series[si])}: '
                      f'{fmt_label(v, unit)}</title></rect>')
            el.append(f'<text x="{x + (bw - 2) / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle" '
                      f'font-size="10">{fmt_label(v, unit)}</text>')
        if targets and targets[gi]:
            ty = y0 + h - frac(targets[gi]) * h
            el.append(f'<line x1="{x0 + gi * gw + 4:.1f}" y1="{ty:.1f}" x2="{x0 + (gi + 1) * gw - 4:.1f}" '
                      f'y2="{ty:.1f}" {TARGET_STYLE}><title>target {fmt_label(targets[gi], unit)}</title></line>')
        el.append(f'<text x="{x0 + gi * gw + gw / 2:.1f}" y="{y0 + h + 16}" text-anchor="middle" '
                  f'font-size="11">{html.escape(g)}</text>')
        if sublabels and sublabels[gi]:
            el.append(f'<text x="{x0 + gi * gw + gw / 2:.1f}" y="{y0 + h + 30}" text-anchor="middle" '
                      f'font-size="10" fill="#555">{html.escape(sublabels[gi])}</text>')
    el += legend(x0 + w + 20, y0, series, colors, [(target_label, TARGET_STYLE)] if tvals else [])
    return el


def svg_stacked(x0, y0, w, h, title, note, groups, series, values, colors, unit=""):
    """Stacked bars: values[g][s] stacked in series order, the total on top."""
    totals = [sum(v or 0 for v in row) for row in values]
    if not any(totals):
        return [f'<text x="{x0}" y="{y0 - 28}" font-size="15" font-weight="bold">{html.escape(title)}</text>',
                f'<text x="{x0 + w / 2}" y="{y0 + h / 2}" text-anchor="middle">no data</text>']
    frac, ticks = scale(totals, False)
    el = axes(x0, y0, w, h, title, note, ticks, frac, unit)
    gw = w / max(1, len(groups))
    bw = min(44.0, gw * 0.6)
    for gi, g in enumerate(groups):
        x = x0 + gi * gw + (gw - bw) / 2
        base = 0.0
        for si, s in enumerate(series):
            v = values[gi][si] or 0
            if v <= 0:
                continue
            y_top = y0 + h - frac(base + v) * h
            y_bot = y0 + h - frac(base) * h
            el.append(f'<rect x="{x:.1f}" y="{y_top:.1f}" width="{bw:.1f}" height="{y_bot - y_top:.1f}" '
                      f'fill="{colors[si % len(colors)]}"><title>{html.escape(g)} / {html.escape(s)}: '
                      f'{fmt_label(v, unit)}</title></rect>')
            if y_bot - y_top >= 12:
                el.append(f'<text x="{x + bw / 2:.1f}" y="{(y_top + y_bot) / 2 + 4:.1f}" text-anchor="middle" '
                          f'font-size="9" fill="white">{fmt_label(v, unit)}</text>')
            base += v
        if totals[gi]:
            y = y0 + h - frac(totals[gi]) * h
            el.append(f'<text x="{x + bw / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle" font-size="10" '
                      f'font-weight="bold">{fmt_label(totals[gi], unit)}</text>')
        el.append(f'<text x="{x0 + gi * gw + gw / 2:.1f}" y="{y0 + h + 16}" text-anchor="middle" '
                  f'font-size="11">{html.escape(g)}</text>')
    el += legend(x0 + w + 20, y0, series, colors)
    return el


def fmt_label(v, unit):
    if unit == "ratio":
        return f"{v:.2f}"
    if unit == "us":
        if v < 10:
            return f"{v:.1f}µs"
        if v >= 10_000:
            return f"{v / 1000:.0f}ms"
        if v >= 1000:
            return f"{v / 1000:.1f}".rstrip("0").rstrip(".") + "ms"
        return f"{round(v, -1) if v >= 100 else round(v):.0f}µs"
    if v >= 1000:
        return f"{v / 1000:.0f}k" if v >= 10_000 else f"{v / 1000:.1f}k"
    return f"{v:.0f}"


def fmt_tick(v, unit):
    if unit == "ratio":
        return f"{v:g}"
    if unit == "us":
        if v >= 1000:
            return f"{v / 1000:g} ms"
        return f"{v:g} µs"
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def mean(values):
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


# The saturation runs (wrk, as fast as it goes) whose latency is per request;
# redis-benchmark's is per pipelined batch, and k6 runs at a fixed rate.
WRK_RUNS = ["ceiling", "checkout", "sellout", "postsellout", "purchase", "mixed"]
# What each scenario's throughput is judged against, and the target ratio.
RATIO_TO = {"checkout": ("ceiling", 0.5), "sellout": ("ceiling", None), "postsellout": ("ceiling", 0.9),
            "purchase": ("redis_p16", 0.8), "mixed": ("ceiling", None)}
CPU_PARTS = [("server", "server"), ("redis", "Redis"), ("postgres", "Postgres"), ("loadgen", "load generator"),
             ("irq", "interrupts")]
P99_TARGET_US = {"checkout": 5000}


def chart(runs, path: Path, title: str):
    rounds = sorted({r["round"] for r in runs})
    idx = {(r["round"], r["scenario"]): r for r in runs}
    present = [s for s in ORDER if any(r["scenario"] == s for r in runs)]

    def get(rd, s, key):
        return (idx.get((rd, s)) or {}).get(key)

    round_colors = ["#4e79a7", "#f28e2b", "#76b7b2", "#edc948", "#b07aa1"]
    pct_colors = ["#59a14f", "#e15759", "#7b3294"]
    panels = []

    def add(height, draw, *args, **kwargs):
        panels.append((height, lambda x0, y0, w, h: draw(x0, y0, w, h, *args, **kwargs)))

    # 1. throughput as a ratio to the same round's reference, with the target
    scen = [s for s in RATIO_TO if s in present]
    ratios = [[ratio(get(rd, s, "rps"), get(rd, RATIO_TO[s][0], "rps")) for rd in rounds] for s in scen]
    groups = [SHORT[s] + (" ÷ redis -P16" if RATIO_TO[s][0] == "redis_p16" else " ÷ ceiling") for s in scen]
    ceil = ", ".join(f"round {rd}: {fmt_label(get(rd, 'ceiling', 'rps') or 0, '')}" for rd in rounds)

    def sellout_time(s):
        if s != "sellout":
            return None
        times = [num(((idx.get((rd, s)) or {}).get("sellout") or {}).get("sellout_ms")) for rd in rounds]
        shown = ", ".join("not sold out" if t is None else f"{t:,.0f} ms" for t in times)
        return f"all sold in {shown} (target < 1 s)"

    add(300, svg_bars,
        "Throughput against the same round's reference (saturation, wrk)",
        f"requests/s ÷ the ceiling of the same round (bare responder: {ceil} req/s); "
        f"the purchase path ÷ redis-benchmark -P 16 of the same script",
        groups, [f"round {rd}" for rd in rounds], ratios, round_colors, unit="ratio",
        targets=[RATIO_TO[s][1] for s in scen], sublabels=[sellout_time(s) for s in scen])

    # 2. latency per request of the saturation runs
    scen = [s for s in WRK_RUNS if s in present]
    lat = [[mean([get(rd, s, k) for rd in rounds]) for k in ("p50_us", "p99_us", "p999_us")] for s in scen]
    add(280, svg_bars,
        "Latency per request under saturation (wrk), log scale",
        "p50 / p99 / p99.9, mean of rounds; redis-benchmark is left out (its latency is per pipelined batch)",
        [SHORT[s] for s in scen], ["p50", "p99", "p99.9"], lat, pct_colors, log=True, unit="us",
        targets=[P99_TARGET_US.get(s) for s in scen], target_label="target p99")

    # 3. CPU per request by process, stacked
    scen = [s for s in ORDER if s in present and s != "k6"]

    def per_request(s, key):
        vals = []
        for rd in rounds:
            r = idx.get((rd, s))
            if r and r.get("requests"):
                vals.append(r["cpu_s"][key] / r["requests"] * 1e6)
        return mean(vals)

    cpu = [[per_request(s, k) for k, _ in CPU_PARTS] for s in scen]
    add(300, svg_stacked,
        "CPU per request, by process (µs, mean of rounds)",
        "what the machine spends on one request: where the ratios above come from",
        [SHORT[s] for s in scen], [name for _, name in CPU_PARTS], cpu,
        ["#4e79a7", "#e15759", "#59a14f", "#bab0ac", "#f28e2b"], unit="us")

    # 4. the fixed-rate k6 run, apart
    if "k6" in present:
        route_names = sorted({n for rd in rounds for n in (get(rd, "k6", "routes") or {})})
        rate = (idx.get((rounds[0], "k6")) or {}).get("kv", {}).get("rate", "?")
        rps = mean([get(rd, "k6", "rps") for rd in rounds])
        rows, groups = [], []
        for n in route_names:
            groups.append(n)
            rows.append([mean([((get(rd, "k6", "routes") or {}).get(n) or {}).get(k) for rd in rounds])
                         for k in ("p50_us", "p99_us", "p999_us")])
        groups.append("every request")
        rows.append([mean([get(rd, "k6", k) for rd in rounds]) for k in ("p50_us", "p99_us", "p999_us")])
        add(240, svg_bars,
            f"k6 at a fixed arrival rate: {rate} shoppers/s "
            f"(≈ {fmt_label(rps or 0, '')} requests/s), log scale",
            "latency by route, p50 / p99 / p99.9, mean of rounds; not a saturation run",
            groups, ["p50", "p99", "p99.9"], rows, pct_colors, log=True, unit="us")

    n_groups = max(len(ORDER), 6)
    plot_w = max(760, 95 * n_groups)
    W = 80 + plot_w + LEGEND_W + 20
    y, el_panels = 60, []
    for height, draw in panels:
        y += 56
        el_panels += draw(80, y, plot_w, height)
        y += height + 48
    H = y
    el = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
          f'font-family="sans-serif">', f'<rect width="{W}" height="{H}" fill="white"/>',
          f'<text x="{W / 2}" y="26" text-anchor="middle" font-size="13" fill="#555">{html.escape(title)}</text>']
    el += el_panels
    el.append("</svg>")
    path.write_text("\n".join(el) + "\n")


# ---------------------------------------------------------------------------
# report


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    d = Path(sys.argv[1])
    meta = read_kv(d / "meta.kv") if (d / "meta.kv").is_file() else {}
    runs = load_runs(d)
    rounds = by_round(runs)
    dirty = " (dirty)" if meta.get("dirty") == "1" else ""
    title = f"flashsale {meta.get('short', '?')}{dirty} — {meta.get('started_utc', '?')} — {meta.get('cpu_model', '?')}, {meta.get('cpus', '?')} CPUs"
    chart(runs, d / "chart.svg", title)

    md = []
    md.append(f"# flashsale benchmark, {meta.get('started_utc', '?')}")
    md.append("")
    md.append(f"Commit `{meta.get('commit', '?')}`{dirty} on `{meta.get('branch', '?')}`; "
              f"{meta.get('set_ROUNDS', '?')} round(s) of `wrk -t{meta.get('set_THREADS', '?')} "
              f"-c{meta.get('set_CONNECTIONS', '?')} -d{meta.get('set_DURATION', '?')} --latency`"
              f"{' (QUICK)' if meta.get('set_QUICK') == '1' else ''}; server and ceiling on "
              f"{meta.get('set_SERVER_CORES', '?')} core(s). Made by `bench/bench.sh`; "
              f"figures from one machine where the load generator, the server, Redis and Postgres share "
              f"the CPUs, so compare ratios within a round rather than absolute figures across machines. "
              f"The *other* CPU column is what other processes on the machine used meanwhile: when it is "
              f"high, the run was disturbed.")
    md.append("")
    md.append("![throughput against the ceiling, latency, CPU per request, k6](chart.svg)")
    md.append("")

    md.append("## Targets")
    md.append("")
    md.append("| # | target | measured | verdict |")
    md.append("| --- | --- | --- | --- |")
    trows = targets(runs, meta)
    for n, t, fig, v in trows:
        md.append(f"| {n} | {t} | {fig} | {v} |")
    md.append("")

    md.append("## Throughput and latency")
    md.append("")
    md.append("Ratios are to the ceiling of the same round (the purchase path also to redis-benchmark -P 16 "
              "of the same round). Latency: wrk's (from a request's write to its response; "
              "p99.9 from the BENCH line of bench/lib.lua), redis-benchmark's, or k6's `http_req_duration`.")
    md.append("")
    md.append("| round | scenario | req/s | × ceiling | p50 | p99 | p99.9 | requests | responses by status | non-2xx | socket errors |")
    md.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    for r in runs:
        rs = rounds[r["round"]]
        ce = rs.get("ceiling", {}).get("rps")
        q = ratio(r.get("rps"), ce) if r["scenario"] not in ("ceiling", "redis_p1", "redis_p16", "k6") else None
        if r["scenario"] == "ceiling":
            q = 1.0 if r.get("rps") else None
        extra = ""
        if r["scenario"] == "purchase" and rs.get("redis_p16", {}).get("rps"):
            extra = f" ({f_ratio(ratio(r.get('rps'), rs['redis_p16']['rps']))} × -P 16)"
        name = NAMES.get(r["scenario"], r["scenario"])
        if r["scenario"] == "k6":
            name += f" @ {r['kv'].get('rate', '?')}/s"
        md.append(
            f"| {r['round']} | {name} | {f_int(r.get('rps'))} | {f_ratio(q)}{extra} | {f_us(r.get('p50_us'))} | "
            f"{f_us(r.get('p99_us'))} | {f_us(r.get('p999_us'))} | {f_int(r.get('requests'))} | "
            f"{statuses_text(r.get('statuses', {}))} | {f_int(r.get('non2xx'))} | "
            f"{r.get('socket_errors', '–') if r['kv'].get('kind') == 'wrk' else '–'} |"
        )
    md.append("")

    def note(r):
        notes = []
        if num(r["kv"].get("aof_rewrites"), 0) > 0:
            notes.append("Redis AOF rewrite during the run")
        if r["wall_s"] and (r["cpu_s"]["other"] + r["cpu_s"]["steal"]) / r["wall_s"] > 0.25:
            notes.append("disturbed (other + steal > 25% of a core)")
        return "; ".join(notes)

    md.append("## CPU")
    md.append("")
    md.append("From `/proc/<pid>/stat` (utime+stime) sampled just before and after each load run: the server "
              "(or the bare responder), redis-server, Postgres (the postmaster, its live children and the "
              "children it reaped), the load generator (bash `time`: wrk, redis-benchmark, k6; for the "
              "sellout also its poller); from `/proc/stat`: *irq* (irq + softirq time of all CPUs, charged to "
              "no process: much of the loopback network's packet work), *steal*, and *other*: time in every "
              "other process (user + system of all CPUs minus the above: a neighbour's build, the harness's "
              "own polling). % of one core over the run's wall time, and µs of CPU per request.")
    md.append("")
    md.append("| round | scenario | wall | server | Redis | Postgres | load gen | irq | steal | other | server µs/req | Redis µs/req | Postgres µs/req | load gen µs/req | note |")
    md.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in runs:
        wall = r["wall_s"] or 0
        cpu = r["cpu_s"]
        reqs = r.get("requests")

        def pct(k):
            return f"{cpu[k] / wall * 100:.0f}%" if wall else "–"

        def per(k):
            return f"{cpu[k] / reqs * 1e6:.1f}" if reqs else "–"

        md.append(f"| {r['round']} | {NAMES.get(r['scenario'], r['scenario'])} | {wall:.1f} s | {pct('server')} | "
                  f"{pct('redis')} | {pct('postgres')} | {pct('loadgen')} | {pct('irq')} | {pct('steal')} | {pct('other')} | {per('server')} | "
                  f"{per('redis')} | {per('postgres')} | {per('loadgen')} | {note(r)} |")
    md.append("")

    # scenario details
    md.append("## Scenario details")
    md.append("")
    for rnd in sorted(rounds):
        rs = rounds[rnd]
        items = []
        c = rs.get("checkout")
        if c:
            kv = c["kv"]
            items.append(
                f"checkout crowd: {f_int(num(kv.get('checkouts_answered')))} checkouts answered by the server "
                f"(200/404/409; wrk saw {f_int(c.get('requests'))}), {f_int(num(kv.get('checkout_rows')))} rows in "
                f"`checkouts`; writer {'drained ' + kv.get('drain_ms', '?') + ' ms after the run' if kv.get('drained') == '1' else 'did NOT drain within the timeout'} "
                f"(queue depth {kv.get('queue_depth_after', '?')}); writer-queue-full 503s {kv.get('writer_queue_full', '?')}, "
                f"shed 503s {kv.get('shed', '?')}")
        s = rs.get("sellout")
        if s:
            so = s.get("sellout", {})
            cnt = s.get("counters", {})
            items.append(
                f"sellout: {so.get('sold', '?')} of {so.get('total', '?')} sold; all sold at {so.get('sellout_ms', '?')} ms "
                f"(half at {so.get('t50_ms', '?')} ms, 90% at {so.get('t90_ms', '?')} ms; polled every {so.get('poll_ms', '?')} ms), "
                f"{f_int(s.get('rps'))} req/s meanwhile ({f_int(s.get('requests'))} requests: "
                f"{cnt.get('checkout_200', 0):,} checkouts accepted, {cnt.get('purchase_200', 0):,} purchases bought "
                f"{cnt.get('items_bought', 0):,} items); the server answered "
                f"{f_int(num(so.get('server_requests')))} checkouts and purchases until then, the rate in the tables; "
                f"wrk's own figure, {f_int(s.get('wrk_rps'))} req/s, and its latency also count the cheap 409s "
                f"between the sellout and wrk's stop")
        p = rs.get("postsellout")
        if p:
            kv = p["kv"]
            items.append(
                f"post-sellout crowd: {kv.get('items_sold_before', '?')} of {kv.get('items_total', '?')} sold before it; "
                f"{f_int(num(kv.get('sold_map_answers')))} answers from the known-sold map (no Redis) out of "
                f"{f_int(p.get('requests'))} seen by wrk (the server also counts those in flight when wrk stopped)"
                + (f"; answered 503: {p['statuses'][503]:,} (raw/r{rnd}-sellout.metrics.txt says why: "
                   f"flashsale_writer_queue_full_total, flashsale_shed_total)" if p.get("statuses", {}).get(503) else ""))
        pu = rs.get("purchase")
        if pu:
            kv = pu["kv"]
            served = num(kv.get("server_requests"))
            spent = num(kv.get("codes_spent"))
            items.append(
                f"purchase path: {f_int(served)} purchases served over {f_int(num(kv.get('codes')))} prepared codes: "
                f"{f_int(spent)} first purchases ({f_share(spent, served)}), the rest replays; "
                f"{kv.get('items_sold', '?')} items sold")
        for key in ("redis_p1", "redis_p16"):
            rb = rs.get(key)
            if rb:
                kv = rb["kv"]
                sent = num(kv.get("requests_sent"))
                spent = num(kv.get("codes_spent"))
                items.append(
                    f"{NAMES[key]}: {f_int(sent)} EVALSHA, {f_int(spent)} first purchases ({f_share(spent, sent)}), "
                    f"{kv.get('items_sold', '?')} items sold")
        m = rs.get("mixed")
        if m:
            cnt = m.get("counters", {})
            items.append(
                f"mixed flow: {cnt.get('shoppers', 0):,} shoppers started, {cnt.get('shoppers_done', 0):,} done, "
                f"{cnt.get('purchase_200', 0):,} purchases bought something; {cnt.get('unmatched', 0):,} responses "
                f"without a known X-Request-Id")
        k = rs.get("k6")
        if k:
            routes = "; ".join(f"{name}: p50 {f_us(v.get('p50_us'))}, p99 {f_us(v.get('p99_us'))}"
                               for name, v in sorted(k.get("routes", {}).items()))
            fr = k.get("failed_rate")
            items.append(
                f"k6 at {k['kv'].get('rate', '?')}/s: {f_int(k.get('requests'))} requests, "
                f"http_req_failed {'–' if fr is None else f'{fr * 100:.2f}%'}, dropped iterations {f_int(k.get('dropped'))}"
                f"{'; ' + routes if routes else ''}; k6 exit code {k['kv'].get('rc', '?')}"
                f"{'; thresholds crossed: ' + ', '.join(k['failed_thresholds']) if k.get('failed_thresholds') else ''}")
        if items:
            md.append(f"Round {rnd}:")
            md.append("")
            md += [f"- {x}" for x in items]
            md.append("")

    md.append("## Machine")
    md.append("")
    mem = num(meta.get("mem_total_kb"))
    md.append(f"- CPU: {meta.get('cpu_model', '?')}, {meta.get('cpus', '?')} CPUs")
    md.append(f"- memory: {mem / 1024 / 1024:.1f} GiB" if mem else "- memory: ?")
    md.append(f"- kernel: {meta.get('kernel', '?')}")
    md.append(f"- load average at start / end: {meta.get('loadavg_start', '?')} / {meta.get('loadavg_end', '?')}")
    md.append(f"- started {meta.get('started_utc', '?')}, finished {meta.get('finished_utc', '?')}")
    md.append("")
    md.append("## Tools")
    md.append("")
    for k in ("v_wrk", "v_k6", "v_redis", "v_redis_benchmark", "v_postgres", "v_rustc", "v_python"):
        md.append(f"- {k[2:]}: {meta.get(k, '?')}")
    md.append("")
    md.append("## Settings")
    md.append("")
    md.append(" ".join(f"`{k[4:]}={v}`" for k, v in meta.items() if k.startswith("set_")))
    md.append("")
    md.append("## Commands")
    md.append("")
    md.append("Exactly as run (also in `commands.txt`):")
    md.append("")
    md.append("```")
    cmds = (d / "commands.txt").read_text() if (d / "commands.txt").is_file() else ""
    md.append(cmds.rstrip())
    md.append("```")
    md.append("")
    md.append("Raw outputs: `raw/` (wrk, redis-benchmark, k6 text and JSON; `*.err` their stderr, `*.time` "
              "their CPU), `runs/` (the figures bench.sh sampled), `logs/` (server logs).")
    md.append("")
    (d / "report.md").write_text("\n".join(md))

    # terminal summary
    print()
    print(f"{'round':>5}  {'scenario':<24} {'req/s':>10} {'x ceiling':>9} {'p50':>10} {'p99':>10} {'p99.9':>10}")
    for r in runs:
        rs = rounds[r["round"]]
        ce = rs.get("ceiling", {}).get("rps")
        q = ratio(r.get("rps"), ce) if r["scenario"] not in ("redis_p1", "redis_p16", "k6") else None
        print(f"{r['round']:>5}  {NAMES.get(r['scenario'], r['scenario']):<24} {f_int(r.get('rps')):>10} "
              f"{f_ratio(q):>9} {f_us(r.get('p50_us')):>10} {f_us(r.get('p99_us')):>10} {f_us(r.get('p999_us')):>10}")
    print()
    print("Targets:")
    for n, t, fig, v in trows:
        print(f"  {n}. {re.sub(r'[*]', '', t)}")
        for line in fig.split("<br>"):
            print(f"     {line}")
        print(f"     => {re.sub(r'[*]', '', v)}")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
