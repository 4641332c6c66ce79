"""What `graphc bench` prints, from its results (the JSON it writes with ``--json``): the
console header, table and footer, and README's performance table (:func:`readme_table`,
``python benchmarks/run.py --readme results.json``).  Formatting only: nothing is measured
here.
"""

from __future__ import annotations

MB = 1e6


def _num(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def ms_text(ms) -> str:
    """Milliseconds with 3 decimals, 5 below 0.1 ms (a call-overhead workload's microseconds)."""
    return "" if ms is None else f"{ms:.3f}" if ms >= 0.1 else f"{ms:.5f}"


def loads_text(loads) -> str:
    return " ".join("n/a" if x is None else f"{x:.2f}" for x in loads or [None])


def blas_text(libraries) -> str:
    """``openblas 0.3.31 Haswell, 2 threads (numpy.libs)`` for each library, or ``none``."""
    parts = []
    for lib in libraries or ():
        name = " ".join(str(lib[k]) for k in ("internal_api", "version", "architecture")
                        if lib.get(k))
        threads = "" if lib.get("num_threads") is None else f", {lib['num_threads']} threads"
        parts.append(f"{name}{threads}" + (f" ({lib['library']})" if lib.get("library") else ""))
    return "; ".join(parts) or "none found"


def target_text(row) -> str:
    """``<= 0.80`` (a ratio to the faster peer), ``<= 50 us`` (a time), or both."""
    parts = [] if row.get("target") is None else [f"{row['target']:.2f}"]
    if row.get("target_us") is not None:
        parts.append(f"{row['target_us']:g} us")
    return "<= " + " & ".join(parts) if parts else ""


def met_text(met) -> str:
    return {True: "yes", False: "no", None: "n/a"}[met]


def cpu_text(info: dict) -> str:
    """``AMD EPYC (znver4, family 25 model 17; avx512f)``: the CPU, its core (older JSON
    files have none) and its vector ISA."""
    core = f"{info['core']}; " if info.get("core") else ""
    return f"{info['cpu']} ({core}{info['isa']})"


def header(info: dict) -> str:
    """The machine, the children's environment and BLAS, and its measured limits."""
    versions = ", ".join(f"{name} {v or 'not installed'}" for name, v in info["versions"].items())
    lines = [f"graphc bench: {cpu_text(info)}, {info['cores']} cores "
             f"({info['usable_cores']} usable), {info['threads']} threads; python "
             f"{info['python']}, {versions}; load average {loads_text(info['load_average_start'])}",
             f"children: {'/'.join(info['env_removed'])} removed from the environment; "
             f"BLAS of NumPy (graphc's matmuls): {blas_text(info['peaks'].get('blas'))}"
             + (f"; {info['bytecode']}" if info.get("bytecode") else "")]
    peaks = info["peaks"]
    if peaks.get("note"):
        lines.append(f"limits: not measured ({peaks['note']})")
    else:
        lines.append(f"limits: sgemm {peaks['gemm_n']}^3 {peaks['gemm_flops_per_s'] / 1e9:.1f} "
                     f"GFLOP/s, float32 copy {peaks['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s "
                     f"({peaks['copy_bytes'] // 2**20} MiB, {peaks['copy_threads']} threads), "
                     f"best of {peaks['repeats']} each")
    return "\n".join(lines)


COLUMNS = (f"{'workload':<9}{'framework':<16}{'ms/step':>10}{'ratio':>7}{'best peer':>12}"
           f"{'vs torch':>9}{'target':>10}{'met':>5}{'compile s':>10}{'warm s':>8}"
           f"{'% limit':>8}{'steps':>7}")


def _row_line(row) -> str:
    graphc = row["framework"].startswith("graphc")
    compile_s = row.get("compile_cold_s") if graphc else row["compile_s"]
    return (f"{'':<9}{row['framework']:<16}{ms_text(row['ms_per_step']):>10}"
            f"{_num(row['ratio'], '.2f'):>7}{(row['best_peer'] or '') if graphc else '':>12}"
            f"{_num(row['ratio_torch'], '.2f'):>9}{target_text(row):>10}"
            f"{met_text(row['met']) if graphc else '':>5}{_num(compile_s, '.2f'):>10}"
            f"{_num(row.get('compile_warm_s'), '.3f'):>8}"
            f"{_num(row.get('pct_of_limit'), '.1f'):>8}{row['steps']:>7}")


def step_line(rows: list[dict]) -> str:
    """The workload's FLOPs, bytes and physical limit, and its peak memory in graphc's plan
    and in PyTorch eager."""
    by_name = {row["framework"]: row for row in rows}
    graphc = next((row for row in rows if row["framework"].startswith("graphc")), {})
    parts = []
    if graphc.get("flops") is not None:
        parts.append(f"{graphc['flops'] / 1e6:.1f} MFLOP (matmul, conv), "
                     f"{graphc['bytes'] / MB:.2f} MB in + out")
    if graphc.get("limit_ms") is not None:
        parts.append(f"limit {ms_text(graphc['limit_ms'])} ms ({graphc['bound']} bound)")
    if len(graphc.get("ratio_rounds") or []) > 1:
        by_round = graphc["ratio_rounds"]
        parts.append(f"ratio to {graphc['best_peer']} by round {min(by_round):.2f}-"
                     f"{max(by_round):.2f}")
    if graphc.get("grad_cold_s") is not None:
        parts.append(f"graph + gc.grad {graphc['grad_cold_s']:.2f} s cold, "
                     f"{graphc['grad_warm_s']:.3f} s warm (before the compile)")
    memory = [f"{name} {row[key] / MB:.2f} MB" for name, row, key in (
        ("planned", graphc, "planned_peak_bytes"),
        ("torch eager", by_name.get("torch eager", {}), "peak_bytes")) if row.get(key)]
    if memory:
        parts.append("peak memory " + ", ".join(memory))
    if graphc.get("compile_note"):
        parts.append(f"compile times: {graphc['compile_note']}")
    return f"{'':<9}step: " + "; ".join(parts) if parts else ""


def table_rows(title: str, rows: list[dict]) -> str:
    """One workload's lines of the table: its title, a line per framework, its step line."""
    lines = [f"{rows[0]['workload']:<9}{title}"]
    for row in rows:
        lines.append(f"{'':<9}{row['framework']:<16}  {row['note']}" if row["note"]
                     else _row_line(row))
    return "\n".join(lines + [line for line in [step_line(rows)] if line])


def footer(info: dict, rows: list[dict], busy_load: float) -> str:
    """The BLAS each framework's child had loaded, the load averages, and a warning when
    other work loaded the machine during the run."""
    blas = {}
    for row in rows:
        if row["framework"] not in blas and "blas" in row:
            blas[row["framework"]] = blas_text(row["blas"])
    lines = ["BLAS in each child: " + "; ".join(f"{k}: {v}" for k, v in blas.items())]
    probes = info["peaks"].get("probes", [])
    if len(probes) > 1:
        gemm, copy = ([p[k] / 1e9 for p in probes] for k in (0, 1))
        lines.append(f"limits: {len(probes)} probes, one before each workload: sgemm "
                     f"{min(gemm):.1f}-{max(gemm):.1f} GFLOP/s, float32 copy {min(copy):.1f}-"
                     f"{max(copy):.1f} GB/s; each row's % of limit is of the best probe before it")
    lines.append(f"load average at the end: {loads_text(info['load_average_end'])}; the "
                 f"1-minute one reached {_num(info['load_1min_max'], '.2f') or 'n/a'}")
    if info["busy"]:
        lines.append(f"warning: other work loaded the machine during the run (1-minute load "
                     f"average up to {info['load_1min_max']:.2f} with this bench's "
                     f"{info['threads']} thread(s), more than {busy_load} over them): timings "
                     f"are unreliable")
    return "\n".join(lines)


README_COLUMNS = ("workload", "graphc ms", "torch eager ms", "jax jit ms", "ratio (best peer)",
                  "target", "met", "% of limit", "graphc compile cold / warm s",
                  "JAX first call s", "peak MB planned / torch")


def _readme_row(rows: list[dict]) -> str:
    by_name = {row["framework"]: row for row in rows}
    g = next(row for row in rows if row["framework"].startswith("graphc"))
    torch, jax = by_name.get("torch eager", {}), by_name.get("jax jit", {})

    def pair(a, b, fmt):
        return "" if a is None and b is None else f"{_num(a, fmt)} / {_num(b, fmt)}"
    ratio = "" if g["ratio"] is None else f"{g['ratio']:.2f} ({g['best_peer']})"
    peak_torch = torch.get("peak_bytes")
    cells = [g["workload"], ms_text(g["ms_per_step"]) or g["note"],
             ms_text(torch.get("ms_per_step")) or torch.get("note", ""),
             ms_text(jax.get("ms_per_step")) or jax.get("note", ""), ratio,
             target_text(g).replace("<=", "≤"), met_text(g["met"]),
             _num(g.get("pct_of_limit"), ".1f"),
             pair(g.get("compile_cold_s"), g.get("compile_warm_s"), ".2f"),
             _num(jax.get("compile_s"), ".2f"),
             pair(g.get("planned_peak_bytes") and g["planned_peak_bytes"] / MB,
                  peak_torch and peak_torch / MB, ".2f")]
    return "| " + " | ".join(cells) + " |"


def readme_table(report: dict) -> str:
    """README's performance table (markdown) from the JSON of a `graphc bench` run: a line
    on the machine and the run, a row per workload, a line per extra framework."""
    info, results = report["machine"], report["results"]
    peaks = info["peaks"]
    graphc = next(r["framework"] for r in results if r["framework"].startswith("graphc"))
    limits = ("" if peaks.get("note") else
              f"; sgemm peak {peaks['gemm_flops_per_s'] / 1e9:.1f} GFLOP/s, float32 copy "
              f"{peaks['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s")
    lines = [f"`graphc bench --seconds {report['seconds']:g}` on {info['date']}: {graphc}, "
             f"{cpu_text(info)}, {info['threads']} threads, BLAS "
             f"{blas_text(peaks.get('blas'))}{limits}; 1-minute load average "
             f"{loads_text((info['load_average_start'] or [None])[:1])} at the start, up to "
             f"{_num(info['load_1min_max'], '.2f') or 'n/a'} during the run.", "",
             "| " + " | ".join(README_COLUMNS) + " |",
             "|" + "|".join(["---"] + ["--:"] * (len(README_COLUMNS) - 1)) + "|"]
    workloads = list(dict.fromkeys(r["workload"] for r in results))
    for name in workloads:
        lines.append(_readme_row([r for r in results if r["workload"] == name]))
    extra = [r for r in results if r["framework"] not in (graphc, "torch eager", "jax jit")]
    if extra:
        lines.append("")
        lines += [f"{r['workload']} {r['framework']}: {ms_text(r['ms_per_step']) or r['note']}"
                  + (" ms" if r["ms_per_step"] is not None else "") for r in extra]
    return "\n".join(lines)
