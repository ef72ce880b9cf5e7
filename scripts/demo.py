"""`make demo`: train a small AR and a small masked-diffusion LM on the embedded corpus
(the Python standard library's own source, which every machine with Python has), then
print both models' losses, a sample from each, and where the runs live.

Each run is a plain `dllm-jax train` command (printed before it runs); rerunning the
demo resumes or skips finished runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def tensorboard_hint(logdir: str) -> str:
    """`tensorboard --logdir DIR`, preceded by how to install it when it is not importable (training
    writes the event files with tensorboardX; the viewer is the `tensorboard` extra)."""
    import importlib.util

    command = f"tensorboard --logdir {logdir}"
    if importlib.util.find_spec("tensorboard") is None:
        return f"pip install -e '.[tensorboard]' (not installed), then {command}"
    return command


def extend_command(config: str, workdir: str, steps: int, extra: list[str]) -> str:
    """The command that trains the finished demo run in `workdir` on for as many steps again
    (`train.num_steps` may grow on resume: an extension, see dllm_jax.train.check_run_length;
    rerunning the same command alone only says that the run is finished)."""
    kept = [a for a in extra if not a.startswith("--config.train.num_steps")]
    return " ".join([".venv/bin/dllm-jax", "train", "--config", config, "--workdir", workdir, "--config.objective=mdm",
                     *kept, f"--config.train.num_steps={2 * int(steps)}"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--config", default="experiments/tiny.py")
    args, extra = parser.parse_known_args()
    results = {}
    for objective in ("ar", "mdm"):
        workdir = os.path.join(args.workdir, objective)
        t0 = time.time()
        if os.path.exists(os.path.join(workdir, "DONE")):
            print(f"{workdir} is finished already; skipping (delete it to retrain)")
        else:
            run([sys.executable, "-m", "dllm_jax", "train", "--config", args.config, "--workdir", workdir,
                 f"--config.objective={objective}", *extra])
        with open(os.path.join(ROOT, workdir, "DONE")) as f:
            results[objective] = {**json.load(f), "seconds": time.time() - t0, "workdir": os.path.abspath(os.path.join(ROOT, workdir))}

    samples = {}
    try:
        from dllm_jax.checkpoint import load_run
        from dllm_jax.sampling import generate

        for objective, res in results.items():
            r = load_run(res["workdir"])
            out = generate(r.model, r.params, r.tokenizer, ["def "], objective=objective, max_new_tokens=48, seed=0, temperature=0.8)
            samples[objective] = (out.texts[0], out.nfe, out.tokens_per_sec)
    except ImportError:
        pass

    print("\n== dllm_jax demo: same model, same data, two objectives ==")
    print(f"{'objective':<10}{'params':>10}{'steps':>7}{'tokens':>10}{'train loss':>12}{'val loss':>10}  workdir")
    for objective, res in results.items():
        final = res["final"]
        print(f"{objective:<10}{res['params']:>10,}{res['step']:>7}{res['step'] * res['global_batch'] * res['seq_len']:>10,}"
              f"{final['train_loss']:>12.4f}{final['val_loss']:>10.4f}  {res['workdir']}")
    print("AR val loss is the exact NLL per token; MDM val loss is the ELBO (an upper bound on the NLL), in nats.")
    for objective, (text, nfe, tps) in samples.items():
        print(f"\n-- {objective} sample (prompt 'def ', {nfe} network calls, {tps:.0f} tokens/s):\n{text}")
    print(f"\nmetrics: <workdir>/metrics.jsonl, TensorBoard: {tensorboard_hint(os.path.abspath(args.workdir))}")
    print(f"train on (resumes with its optimiser state; docs/training.md): "
          f"{extend_command(args.config, os.path.join(args.workdir, 'mdm'), results['mdm']['step'], extra)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
