"""Which loss term drives which module: weighted gradient norms per term, at several DiT widths.

The total loss is loss_w_fm*fm + loss_w_dyn*dyn + loss_w_geo*geo + loss_w_reg*reg, and the VLM and
the anchor receive gradients from the action loss and the world losses alike. Under one global
gradient clip and Adam, a term whose gradient is many times the others' sets the direction of
those shared modules. For each width this builds the tiny VLM with a fresh head at that width,
runs one SA-GR forward on a random chained batch (model_step.py's), and prints each weighted
term's value and the norm of its gradient on the VLM, the anchor, the world predictor and the
DiT, with the world terms' VLM gradients as a ratio to loss_fm's: a ratio well above 1 says the
world model, not the actions, trains the VLM.

    python benchmarks/loss_balance.py [--widths 64,256,1024] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from model_step import build, fake_batch
from sagrflow.model.losses import reduce_losses

GROUPS = {"vlm": "backbone.", "anchor": "anchor.", "world": "head.world.", "dit": "head.dit."}
TERMS = ("fm", "dyn", "geo", "reg")


def gradient_norms(policy, batch) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """-> ({term: weighted value}, {term: {group: norm of the weighted term's gradient}})."""
    weights = policy.config.action_model.loss_weights
    _, terms = reduce_losses(policy(batch), weights)
    values, norms = {}, {}
    for term in TERMS:
        loss = weights[term] * terms[f"loss_{term}"]
        values[term] = loss.item()
        norms[term] = {}
        for group, prefix in GROUPS.items():
            params = [p for n, p in policy.named_parameters() if n.startswith(prefix)]
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            norms[term][group] = sum(float(g.float().pow(2).sum()) for g in grads if g is not None) ** 0.5
    return values, norms


def report(root: Path, widths: list[int], batch_size: int, chain_length: int) -> None:
    print(f"tiny VLM, batch {batch_size}, chain {chain_length}, default loss weights, at initialization")
    print(f"{'width':>5} {'term':>4} {'w*loss':>8} " + " ".join(f"{g:>8}" for g in GROUPS) + "  vlm / fm's")
    for width in widths:
        heads = max((h for h in (2, 4, 8, 16) if width % h == 0 and width // h >= 16), default=1)
        policy = build("tiny", root / str(width), "cpu", dit_width=width, dit_heads=heads)
        torch.manual_seed(1)  # the same flow times and noise at every width
        values, norms = gradient_norms(policy, fake_batch(batch_size, "cpu", chain_length))
        for term in TERMS:
            ratio = norms[term]["vlm"] / norms["fm"]["vlm"]
            cells = " ".join(f"{norms[term][g]:8.3g}" for g in GROUPS)
            print(f"{width:5d} {term:>4} {values[term]:8.3g} {cells}  {ratio:9.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="64,256,1024", help="DiT widths (= task-token width)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chain-length", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sagrflow-loss-balance-") as root:
        report(Path(root), [int(w) for w in args.widths.split(",")], args.batch_size, args.chain_length)


if __name__ == "__main__":
    main()
