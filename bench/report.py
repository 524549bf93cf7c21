"""BENCHMARKS.md's generated tables and docs/bench/*.png from bench/results.json.

The prose of BENCHMARKS.md is written by hand; each table sits between the markers
`<!-- bench:NAME -->` and `<!-- /bench:NAME -->` and is replaced on every run, so the two never
drift apart. Accelerator estimates are computed here from the analytic FLOP count.
"""

from __future__ import annotations

import os
import re

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "BENCHMARKS.md")
PLOTS = os.path.join(ROOT, "docs", "bench")

# Dense bf16 peak per chip (vendor figures): TPU v5e 197 TFLOP/s, H100 SXM 989 TFLOP/s.
ACCELERATORS = [("TPU v5e-8 (8 chips)", 8 * 197e12), ("1x H100 SXM", 989e12)]


def _g(x: float) -> str:
    return f"{x / 1e9:,.1f}"


def _ms(x: float) -> str:
    return f"{x * 1e3:,.0f}" if x >= 0.1 else f"{x * 1e3:,.1f}"


def _label(row: dict) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in row.get("overrides", {}).items())
    return f"{row['config']}" + (f" ({extra})" if extra else "")


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def measured_on(r: dict, rows: list[dict]) -> str:
    """The line under a table that names the CPU its rows ran on; a table whose rows come from
    different CPUs says so, row by row, so that they are never read as one machine's numbers."""
    cpus = list(dict.fromkeys(row.get("cpu", r["machine"]["cpu"]) for row in rows))
    if len(cpus) == 1:
        return f"\n\nMeasured on: {cpus[0]}."
    return "\n\n**Rows from different CPUs, not comparable:** " + "; ".join(
        f"{_label(row)}: {row.get('cpu', r['machine']['cpu'])}" for row in rows) + "."


def section_machine(r: dict) -> str:
    m, c = r["machine"], r.get("ceiling", {})
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines = [
        f"- Measured on {m['date']}: **{m['cpu']}**; Python {m['python']}; {versions}.",
        f"- Host allocator: {m['allocator']} (see \"The allocator\").",
    ]
    if c:
        sizes = ", ".join(f"n={n}: {_g(v)}" for n, v in c["matmul_by_size"].items())
        lines.append(f"- **Ceiling**: float32 matmul through XLA **{_g(c['matmul_flops_per_s'])} GFLOP/s** "
                     f"(best of {sizes}); memory bandwidth (y = x + 1 over 256 MiB) "
                     f"{c['copy_bytes_per_s'] / 1e9:.1f} GB/s.")
        if "torch_matmul_flops_per_s" in c:
            lines.append(f"- The same matmul in PyTorch ({c['torch_threads']} threads): "
                         f"{_g(c['torch_matmul_flops_per_s'])} GFLOP/s.")
        if "bf16_to_f32_matmul_flops_per_s" in c:
            torch_bf16 = (f"; PyTorch {_g(c['torch_bf16_matmul_flops_per_s'])} GFLOP/s"
                          if "torch_bf16_matmul_flops_per_s" in c else "")
            lines.append(f"- bfloat16 matmul through XLA: {_g(c['bf16_matmul_flops_per_s'])} GFLOP/s with a "
                         f"bfloat16 result, **{_g(c['bf16_to_f32_matmul_flops_per_s'])} GFLOP/s** with a float32 "
                         f"result (the form mmjax's bfloat16 layers use){torch_bf16}.")
    return "\n".join(lines)


def section_step(r: dict) -> str:
    ceiling = r["ceiling"]["matmul_flops_per_s"]
    rows = []
    for s in r["step"]:
        rows.append([
            _label(s), f"{s['parameters'] / 1e6:.2f} M", s["batch_size"], s.get("devices", 1), _ms(s["step_s"]),
            f"{s['examples_per_s']:,.1f}", f"{s['compile_s']:.1f}", f"{s['peak_bytes_xla'] / 2**30:.2f}",
            f"{s['peak_rss_bytes'] / 2**30:.2f}", _g(s["flops_analytic"]), _g(s["flops_xla_unrolled"]),
            f"{s['flops_xla_unrolled'] / s['flops_analytic']:.3f}", _g(s["flops_per_s"]),
            f"**{100 * s['flops_per_s'] / ceiling:.0f}%**",
        ])
    return table(["config", "params", "batch", "CPU devices", "step ms (median)", "examples/s", "compile s",
                  "XLA peak GiB", "process peak RSS GiB", "GFLOP/step analytic", "GFLOP/step XLA (unrolled)",
                  "XLA / analytic", "GFLOP/s", "MFU"], rows) + measured_on(r, r["step"])


def section_peer(r: dict) -> str:
    ceiling = r["ceiling"]["matmul_flops_per_s"]
    rows = []
    for p in r["peer"]:
        one = p.get("mmjax_one_device_step_s")  # absent from results taken before it was measured
        rows.append([
            p["config"], p["batch_size"], f"{p['mmjax_parameters']:,}", f"{p['peer_parameters']:,}",
            f"{p['max_embedding_diff']:.1e}", f"{_ms(p['mmjax_step_s'])} ({p.get('mmjax_devices', 1)} dev.)",
            "-" if one is None else _ms(one), _ms(p["peer_step_s"]),
            f"{100 * p['flops_analytic'] / p['mmjax_step_s'] / ceiling:.0f}% / "
            f"{100 * p['flops_analytic'] / p['peer_step_s'] / ceiling:.0f}%",
            f"**{p['speedup']:.2f}x**", "-" if one is None else f"{p['speedup_one_device']:.2f}x",
        ])
    return table(["config", "batch", "mmjax params", "open_clip params", "max embedding diff",
                  "mmjax step ms (devices)", "mmjax on one device ms", "PyTorch step ms",
                  "MFU mmjax / PyTorch", "mmjax speed / PyTorch", "one device / PyTorch"], rows) + measured_on(r, r["peer"])


def section_allocator(r: dict) -> str:
    by = {}
    for a in r["allocator"]:
        by.setdefault((a["config"], a["batch_size"]), {}).setdefault(a["allocator"], []).append(a["step_s"])
    rows = []
    for (config, batch), runs in by.items():
        base = sorted(runs.get("system", [float("nan")]))
        for name, times in runs.items():
            rows.append([config, batch, name, ", ".join(_ms(t) for t in times),
                         f"{min(base) / min(times):.2f}x"])
    return table(["config", "batch", "allocator", "step ms (each run)", "speed vs system (best runs)"],
                 rows) + measured_on(r, r["allocator"])


def section_bf16(r: dict) -> str:
    if "skipped" in r["bf16"]:
        return f"Not measured: {r['bf16']['skipped']}; bfloat16 matmuls run at the float32 rate there."
    rows = []
    for b in r["bf16"]:
        t = b["step_s"]
        rows.append([
            b["config"], b["batch_size"], _ms(t["mmjax float32"]), _ms(t["mmjax bfloat16"]),
            _ms(t["pytorch float32"]), _ms(t["pytorch bfloat16"]),
            f"{t['mmjax float32'] / t['mmjax bfloat16']:.2f}x", f"{t['pytorch float32'] / t['pytorch bfloat16']:.2f}x",
            f"**{t['pytorch bfloat16'] / t['mmjax bfloat16']:.2f}x**",
        ])
    return table(["config", "batch", "mmjax f32 ms", "mmjax bf16 ms", "PyTorch f32 ms", "PyTorch bf16 autocast ms",
                  "mmjax bf16 gain", "PyTorch bf16 gain", "mmjax bf16 speed / PyTorch bf16"], rows) + measured_on(r, r["bf16"])


def section_profile(r: dict) -> str:
    return "\n\n".join(_profile(p) for p in r["profile"]) + measured_on(r, r["profile"])


def _profile(p: dict) -> str:
    total = sum(p["groups_s"].values())
    rows = [[group, _ms(s), f"{100 * s / total:.0f}%"] for group, s in
            sorted(p["groups_s"].items(), key=lambda kv: -kv[1])]
    lines = [f"{p['config']}, batch {p['batch_size']}, one step (thread time, both cores):", "",
             table(["kind of operation", "ms", "share"], rows), "",
             f"Matmuls overall: {_g(p['matmul_flops_per_s'])} GFLOP/s. The largest, by shape:", "",
             table(["matmul (output, contracted size)", "calls", "ms", "GFLOP/s"],
                   [[m["shape"], m["calls"], _ms(m["seconds"]), _g(m["flops_per_s"])] for m in p["top_matmuls"]])]
    return "\n".join(lines)


def section_loader(r: dict) -> str:
    consumed = {s["config"]: s["examples_per_s"] for s in r.get("step", [])}
    rows = []
    for l in r["loader"]:
        step = consumed.get(l["config"])
        cached = l.get("cached_examples_per_s")
        best = cached or l["loader_examples_per_s"]
        rows.append([l["config"], l["image_size"], l["batch_size"], l["num_threads"],
                     f"{l['loader_examples_per_s']:,.0f}", f"{cached:,.0f}" if cached else "- (not cached)",
                     f"{step:,.1f}" if step else "-",
                     f"**{best / step:.1f}x**" if step else "-"])
    return table(["config", "image px", "batch", "loader threads", "first epoch examples/s",
                  "later epochs (cached) examples/s", "step examples/s", "delivered / consumed"],
                 rows) + measured_on(r, r["loader"])


def section_scaling(r: dict) -> str:
    rows = [[s["axis"], s["value"], s["batch_size"], _ms(s["step_s"]), f"{s['examples_per_s']:,.0f}",
             _g(s["flops_per_s"])] for s in r["scaling"]]
    return table(["varied", "value", "global batch", "step ms", "examples/s", "GFLOP/s"],
                 rows) + measured_on(r, r["scaling"])


def section_inference(r: dict) -> str:
    rows = []
    for i in r["inference"]:
        generate = ", ".join(f"beam {b}: {i[f'generate_beam{b}_tokens_per_s']:,.0f} tokens/s "
                             f"({i[f'generate_beam{b}_captions_per_s']:,.1f} captions/s)"
                             for b in (1, 4) if f"generate_beam{b}_tokens_per_s" in i)
        rows.append([i["config"], i["batch_size"], f"{i['image_embed_per_s']:,.0f}",
                     f"{i['text_embed_per_s']:,.0f}", generate or "-"])
    return table(["config", "batch", "images embedded/s", "texts embedded/s", "generate() (max_len)"],
                 rows) + measured_on(r, r["inference"])


def section_compile(r: dict) -> str:
    def layers(c: dict) -> str:
        if not c["scan"]:
            return "scan=False (separate blocks)"
        return "scanned, unroll=True (straight code)" if c.get("unroll") == "True" else "scanned (compiled loop)"

    rows = [[c["config"], layers(c), c["batch_size"], f"{c['lower_s']:.1f}",
             f"{c['compile_s']:.1f}", f"**{c['lower_s'] + c['compile_s']:.1f}**",
             f"{c['flops_xla'] / 1e12:,.2f}", f"{c['flops_analytic'] / 1e12:,.2f}"] for c in r["compile"]]
    return table(["config", "layers", "batch", "trace + lower s", "XLA compile s", "total s",
                  "TFLOP/step XLA", "TFLOP/step analytic"], rows) + measured_on(r, r["compile"])


def section_accelerators(r: dict) -> str:
    b16 = next((c for c in r.get("compile", []) if c["config"] == "clip_b16.py" and c["scan"]), None)
    if b16 is None:
        return "(run the compile suite)"
    flops = b16["flops_analytic"]
    rows = []
    for name, peak in ACCELERATORS:
        seconds = flops / (0.5 * peak)
        rows.append([name, f"{peak / 1e12:,.0f}", f"{flops / 1e12:,.0f}", f"{seconds:.2f}",
                     f"{b16['batch_size'] / seconds:,.0f}", "not measured: no accelerator available"])
    return table(["hardware", "peak bf16 TFLOP/s", "TFLOP/step (batch 4096)", "step s at 50% MFU",
                  "examples/s", "measured"], rows)


SECTIONS = {
    "machine": section_machine, "step": section_step, "peer": section_peer, "bf16": section_bf16,
    "allocator": section_allocator,
    "profile": section_profile,
    "loader": section_loader, "scaling": section_scaling, "inference": section_inference,
    "compile": section_compile, "accelerators": section_accelerators,
}


def plot_scaling(r: dict, path: str) -> None:
    fig = Figure(figsize=(11, 3.2))
    FigureCanvasAgg(fig)
    axes_names = [("batch_size", "global batch"), ("image_size", "image side (px)"),
                  ("text_len", "text tokens"), ("devices", "forced CPU devices")]
    for i, (axis, label) in enumerate(axes_names):
        ax = fig.add_subplot(1, 4, i + 1)
        rows = [s for s in r["scaling"] if s["axis"] == axis]
        ax.plot([s["value"] for s in rows], [s["step_s"] * 1e3 for s in rows], "o-")
        ax.set_xlabel(label)
        ax.set_ylabel("step ms" if i == 0 else "")
        ax.set_xscale("log", base=2)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.suptitle("clip_tiny train step on this CPU (one axis varied, the rest as configured)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_peer(r: dict, path: str) -> None:
    fig = Figure(figsize=(6, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    names = [p["config"].removesuffix(".py") for p in r["peer"]]
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [p["batch_size"] / p["mmjax_step_s"] for p in r["peer"]], 0.4, label="mmjax")
    ax.bar([i + 0.2 for i in x], [p["batch_size"] / p["peer_step_s"] for p in r["peer"]], 0.4,
           label="PyTorch (open_clip)")
    ax.set_xticks(list(x), names)
    ax.set_yscale("log")
    ax.set_ylabel("train examples/s")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write(results: dict, doc: str = DOC, plots: str = PLOTS) -> None:
    """Replaces the generated blocks of `doc` and draws the plots into `plots`."""
    os.makedirs(plots, exist_ok=True)
    if "scaling" in results:
        plot_scaling(results, os.path.join(plots, "scaling.png"))
    if "peer" in results:
        plot_peer(results, os.path.join(plots, "peer.png"))
    with open(doc) as f:
        text = f.read()
    for name, section in SECTIONS.items():
        pattern = re.compile(rf"(<!-- bench:{name} -->).*?(<!-- /bench:{name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"BENCHMARKS.md has no <!-- bench:{name} --> ... <!-- /bench:{name} --> block")
        try:
            body = section(results)
        except KeyError as missing:
            body = f"(not measured yet: run `python bench/run_all.py --only {missing.args[0]}`)"
        text = pattern.sub(lambda m: f"{m.group(1)}\n{body}\n{m.group(2)}", text)
    tmp = doc + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, doc)


def summary(results: dict) -> str:
    lines = []
    for name in ("step", "peer", "loader", "compile"):
        if name in results:
            lines.append(f"## {name}\n" + SECTIONS[name](results))
    return "\n\n".join(lines)
