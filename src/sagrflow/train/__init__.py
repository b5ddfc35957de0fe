"""Training (DESIGN.md section 4): `sagrflow train --config-yaml FILE [--section.key value ...]`.

    config.py      RunConfig = datasets.vla_data + framework + trainer; YAML + dotted overrides
    schedule.py    SA-GR phases A/B/C and the warmup + cosine learning-rate factor
    optim.py       freezing and per-module learning rates by module path; AdamW; LambdaLR
    loss.py        each micro-batch's exact share of the step loss (accumulation and DDP exact)
    trainer.py     Trainer: the step, the loop, logging and checkpoint calls
    checkpoint.py  atomic step_XXXXXXX/ checkpoints; latest; exact resume (RNG, data position)
    metrics.py     metric names; metrics.jsonl always, TensorBoard or wandb besides
    stability.py   non-finite checks, first-step magnitude report, NonFiniteFinder
    timing.py      wall time of the two VLM passes

Many processes: `accelerate launch [--config_file configs/accelerate/zero2.yaml] -m sagrflow.cli train ...`.
Nothing here runs at import time; torch and accelerate load when a Trainer is made.
"""
