"""`dllm-jax prepare --config CONFIG [--config.KEY=VALUE ...] --output STORE [beam options]`.

Tokenises the config's corpus (``data.*``: source, paths, tokenizer) into a token store (see
``dllm_jax/data/store.py``) with an Apache Beam pipeline, then prints what the store holds.
Arguments this command does not know are Apache Beam pipeline options: without ``--runner``
the DirectRunner uses one worker process per core; ``--runner=DataflowRunner --project=P
--region=R --temp_location=gs://... --setup_file=./setup.py`` runs it on Dataflow. Re-running
on the same inputs does nothing; an interrupted run resumes. Train from the store with
``dllm-jax train --config CONFIG --config.data.store=STORE``.
"""
from __future__ import annotations

import json
import time

from dllm_jax import config as config_lib

PASSES_UNKNOWN_ARGS = True  # they are Beam pipeline options


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiment file with get_config(); its data.* section says what to prepare")
    parser.add_argument("--output", required=True, help="the store directory (local path or gs://...)")
    parser.add_argument("--in-process", action="store_true",
                        help="prepare in this process without Beam (small corpora: skips Beam's ~20 s start-up)")
    parser.add_argument("--verify", action="store_true", help="also re-hash every shard of the finished store against its manifest")
    parser.epilog = ("Other arguments are Apache Beam pipeline options, e.g. --direct_num_workers=4 or "
                     "--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp --setup_file=./setup.py")


def run(args) -> int:
    from dllm_jax.data import prepare as prepare_lib
    from dllm_jax.data import store as store_lib

    cfg = config_lib.load_config(args.config, args.overrides)
    t0 = time.perf_counter()
    result = prepare_lib.prepare(cfg.data, args.output, runner="in_process" if args.in_process else "beam",
                                 pipeline_args=args.unknown)
    out = result.summary()
    if args.verify:
        t1 = time.perf_counter()
        store_lib.TokenStore(args.output).verify()
        out["verified_seconds"] = round(time.perf_counter() - t1, 3)
    out["wall_seconds"] = round(time.perf_counter() - t0, 3)
    print(json.dumps(out, indent=2))
    return 0
