"""Compile the paper-scale configs for TPU slices on this CPU host and write the reports.

    python scripts/compile_reports.py                   # every entry of PLAN -> docs/compile_reports.md (+ .json)
    python scripts/compile_reports.py --only 1b         # entries whose size starts with '1b'

Each entry is `dllm-jax compile --config experiments/paper_<size>.py --topology T
--config.objective=O` (the same `dllm_jax.aot.compile_report`), run in one process. Needs the
`[tpu]` extra (libtpu). The topology of each size is the smallest v5p slice that fits it with
the paper's global batch (256 x 2048) and FSDP over every chip, plus one v5e example.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (experiment file, topology, extra overrides)
PLAN = [
    ("paper_1b", "v5p:2x2x2", {}),
    ("paper_1b", "v5e:4x4", {}),
    ("paper_2b", "v5p:2x2x2", {}),
    ("paper_4b", "v5p:2x2x4", {}),
    ("paper_8b", "v5p:2x2x4", {}),
    ("paper_moe", "v5p:2x2x4", {}),
    # attention kernels (model.attention_impl 'auto' = Pallas splash attention on TPU): XLA attention for
    # comparison, and long contexts (the same 512K tokens per step): at 32768 only splash fits
    ("paper_1b", "v5p:2x2x2", {"objective": "mdm", "model.attention_impl": "xla"}),
    ("paper_1b", "v5p:2x2x2", {"objective": "mdm", "data.seq_len": 8192, "train.batch_size": 64}),
    ("paper_1b", "v5p:2x2x2", {"objective": "mdm", "data.seq_len": 8192, "train.batch_size": 64, "model.attention_impl": "xla"}),
    ("paper_1b", "v5p:2x2x2", {"objective": "mdm", "data.seq_len": 32768, "train.batch_size": 16}),
    ("paper_1b", "v5p:2x2x2", {"objective": "mdm", "data.seq_len": 32768, "train.batch_size": 16, "model.attention_impl": "xla"}),
    # several slices over DCN (`--num-slices`): data parallelism across slices, FSDP inside each; the same 32 chips as one slice
    ("paper_8b", "v5p:2x2x4", {"objective": "mdm", "num_slices": 2}),
    ("paper_8b", "v5p:2x4x4", {"objective": "mdm"}),
]
OBJECTIVES = ("ar", "mdm")  # the default; --objectives ar,mdm,block_diffusion adds the third


def _gib(b) -> str:
    return f"{b / 1024**3:.1f}"


def summary_row(name: str, r: dict) -> str:
    b = r["bytes"]
    mesh = "x".join(str(v) for v in r["mesh"].values())
    fits = "n/a" if r["fits"] is None else (f"yes ({100 * b['total'] / r['hbm_bytes']:.0f}%)" if r["fits"] else
                                            f"**no** ({100 * b['total'] / r['hbm_bytes']:.0f}%)")
    step = "n/a" if r["xla_seconds"] is None else f"{r['xla_seconds']:.2f}"
    mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.0f}%"
    slices = r.get("num_slices", 1)
    topology = r["topology"] if slices == 1 else f"{slices} x {r['topology']}"
    return (f"| {name} | {r['objective']} | {topology} | {mesh} | {r['params'] / 1e9:.2f}B | {_gib(b['params'])} | "
            f"{_gib(b['opt_state'])} | {_gib(b['temp'])} | {_gib(b['total'])} | {fits} | {r['model_flops'] / 1e12:.0f} | "
            f"{step} | {mfu} | {r['compile_seconds']:.0f} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "compile_reports"))
    p.add_argument("--only", default="", help="run only the sizes that start with this (e.g. 1b, 8b, moe)")
    p.add_argument("--objectives", default=",".join(OBJECTIVES), help="comma-separated objectives (e.g. ar,mdm,block_diffusion)")
    args = p.parse_args()

    from dllm_jax import aot
    from dllm_jax import config as config_lib

    aot._quiet_libtpu()
    entries, t_all = [], time.perf_counter()
    for name, topology, overrides in PLAN:
        size = name.removeprefix("paper_")
        if args.only and not size.startswith(args.only):
            continue
        overrides = dict(overrides)
        num_slices = int(overrides.pop("num_slices", 1))
        requested = [o.strip() for o in args.objectives.split(",") if o.strip()]
        objectives = [overrides.pop("objective")] if "objective" in overrides else requested
        label = name + "".join(f" {k.split('.')[-1]}={v}" for k, v in overrides.items()) + (f" {num_slices} slices" if num_slices > 1 else "")
        for objective in objectives:
            sets = [f"--config.objective={objective}"] + [f"--config.{k}={v}" for k, v in overrides.items()]
            cfg = config_lib.load_config(os.path.join(ROOT, "experiments", f"{name}.py"), config_lib.parse_overrides(sets)[0])
            print(f"== {name} {objective} on {topology}", flush=True)
            try:
                report = aot.compile_report(cfg, topology, num_slices=num_slices)
            except aot.CompileError as e:
                print(f"   error: {e}", flush=True)
                entries.append({"name": label, "topology": topology, "objective": objective, "error": str(e)})
                continue
            print(aot.format_report(report), flush=True)
            entries.append({"name": label, "topology": topology, "objective": objective, "report": report,
                            "command": f"dllm-jax compile --config experiments/{name}.py --topology {topology} "
                                       + (f"--num-slices {num_slices} " if num_slices > 1 else "") + " ".join(sets)})
            write(entries, args.out, time.perf_counter() - t_all)  # after every entry: a crash loses nothing
    write(entries, args.out, time.perf_counter() - t_all)
    print(f"wrote {args.out}.md and .json")
    return 0


def write(entries: list[dict], out: str, seconds: float) -> None:
    from dllm_jax import aot
    import jax
    import libtpu

    header = [
        "# Compile reports: the paper-scale configs on TPU slices",
        "",
        f"Generated by `python scripts/compile_reports.py` on a CPU host without TPUs "
        f"({datetime.date.today().isoformat()}, JAX {jax.__version__}, libtpu {getattr(libtpu, '__version__', '?')}, "
        f"{seconds:.0f} s in all). Each row is the real train step of `experiments/<name>.py` "
        "(global batch 256 x 2048, bf16 compute, f32 parameters and AdamW state, `remat=full`, scan over layers, "
        "FSDP over every chip; the MoE puts 8 experts' shards on an `expert` axis) lowered and compiled by XLA:TPU "
        "for the topology through libtpu.",
        "",
        "Memory is per chip, in GiB, from XLA's memory analysis of the compiled program (parameters and optimizer "
        "state from their shardings; temp = XLA's temporaries: saved activations, gradients, logits). "
        "Model TFLOP is per chip and step (6N + attention). Step time is XLA's cost-model estimate "
        "(`optimal_seconds`, extrapolated from a 2-layer unrolled probe since XLA counts a scanned layer once), "
        "not a measurement; MFU = model FLOPs / (estimated step time x the chip's bf16 peak). These estimates are "
        "rough at best: for the dense models XLA's own FLOP count (in the full reports) comes out 4-26% *below* the "
        "6N + attention count, although `remat=full` recomputes the forward pass, so its cost model misses work, "
        "and its MFU is optimistic (it grows with model size, up to 73% for the 8B). For the v5e it gives no step "
        "time at all (n/a). Memory is the number to plan with; measure step time on the slice.",
        "",
        "| config | objective | topology | mesh (data x fsdp x expert x tensor) | params | params GiB | opt GiB | temp GiB | "
        "total GiB | fits HBM | model TFLOP | est. step s | est. MFU | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows, details = [], []
    for e in entries:
        if "error" in e:
            rows.append(f"| {e['name']} | {e['objective']} | {e['topology']} | error: {e['error']} |" + " |" * 10)
            continue
        rows.append(summary_row(e["name"], e["report"]))
        details += [f"### {e['name']}, {e['objective']}, {e['topology']}", "", f"`{e['command']}`", "", "```",
                    aot.format_report(e["report"]), "```", ""]
    text = "\n".join(header + rows + ["", "## Full reports", ""] + details)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".md", "w", encoding="utf-8") as f:
        f.write(text)
    with open(out + ".json", "w", encoding="utf-8") as f:
        json.dump(entries, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
