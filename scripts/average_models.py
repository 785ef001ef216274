"""Average the weights of models of one lineage into one model (a "model soup").

Usage: ``.venv/bin/python scripts/average_models.py DEST NAME=MODEL [NAME=MODEL ...]``
(MODEL: a model folder or file, or ``default``). Members given twice count
twice. The float32 state dicts are averaged uniformly, batch-norm statistics
included, which is sound only for models fine-tuned from a common ancestor:
they share a loss basin, so their average is a model too (Wortsman et al.
2022). The bundled v7 is one: v4 and its GPU continuation, with most of the
continuation's sensitivity and about v4's faint false positives (TRAINING.md).
DEST gets the float16 weights and a description whose metadata
keep each member's own training record under ``average.members``.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import torch

from napari_metseg.model import load_model, save_model


def main() -> None:
    destination, pairs = Path(sys.argv[1]), [arg.split("=", 1) for arg in sys.argv[2:]]
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise SystemExit(__doc__)
    if len({name for name, _ in pairs}) != len({tuple(pair) for pair in pairs}):
        raise SystemExit("each NAME must name one model")
    models = {name: load_model(path) for name, path in dict(pairs).items()}
    counts = Counter(name for name, _ in pairs)
    total = sum(counts.values())
    states = {name: model.state_dict() for name, model in models.items()}
    first = next(iter(models.values()))
    average = {}
    for key, tensor in first.state_dict().items():
        if tensor.is_floating_point():
            average[key] = sum(counts[n] * states[n][key].float() for n in models) / total
        else:
            average[key] = tensor  # batch counters: the first member's
    first.load_state_dict(average)
    shares = ", ".join(f"{name} {counts[name] / total:g}" for name in models)
    metadata = {
        "how": f"uniform average of the float32 state dicts (batch-norm statistics included): {shares}",
        "members": {name: model.metadata for name, model in models.items()},
    }
    first.metadata = {}
    save_model(first, destination, {"average": metadata}, dtype=torch.float16)
    print(f"averaged {shares} -> {destination}")


if __name__ == "__main__":
    main()
