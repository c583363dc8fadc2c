"""One rank of the distributed tests (started by torchrun from tests/test_distributed.py).

argv: OUT_JSON MODE, MODE "fit" (training.fit on the tiny synthetic set) or "sparse" (a toy
model with an nn.Embedding(sparse=True) table and SparseAdam). Rank 0 writes OUT_JSON.
"""
from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import torch

from dssm_core import distributed, synthetic
from dssm_core.config import TrainConfig
from dssm_core.encoding import FeatureEncoder
from dssm_core.model import DSSM
from dssm_core.training import fit

CFG = TrainConfig(epochs=4, batch_size=256, learning_rate=1e-2, embedding_dim=8,
                  user_hidden=(32, 16), item_hidden=(32, 16), history_len=10,
                  early_stopping_patience=2, seed=11, num_threads=1)


def digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def run_fit(ctx: distributed.DistContext) -> dict:
    ds = synthetic.generate(n_users=300, n_items=120, n_interactions=6_000, seed=3)
    n = len(ds.interactions)
    train_rows, val_rows = np.arange(int(n * 0.7)), np.arange(int(n * 0.7), int(n * 0.8))
    enc = FeatureEncoder(history_len=CFG.history_len, embedding_dim=CFG.embedding_dim)
    enc.fit(ds, train_rows)
    torch.manual_seed(CFG.seed)
    model = DSSM(enc.user_specs_, enc.item_specs_, CFG)
    res = fit(model, enc.transform_events(ds, train_rows), enc.transform_events(ds, val_rows),
              CFG, dist=ctx)
    return {"history": res.history, "best_epoch": res.best_epoch, "stopped": res.stopped,
            "digest": digest(model)}


def run_sparse(ctx: distributed.DistContext) -> dict:
    torch.manual_seed(5)
    emb = torch.nn.Embedding(50, 4, sparse=True)
    head = torch.nn.Linear(4, 1)
    ctx.sync_parameters(emb)
    ctx.sync_parameters(head)
    opt_s = torch.optim.SparseAdam(list(emb.parameters()), lr=0.05)
    opt_d = torch.optim.Adam(list(head.parameters()), lr=0.05)
    g = torch.Generator().manual_seed(9)
    ids = torch.randint(0, 50, (512,), generator=g)
    y = (ids % 2).float()
    params = list(emb.parameters()) + list(head.parameters())
    for step in range(20):
        start, end = ctx.slice((step % 4) * 128, (step % 4 + 1) * 128)
        logit = head(emb(ids[start:end])).squeeze(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y[start:end])
        opt_s.zero_grad()
        opt_d.zero_grad()
        loss.backward()
        assert emb.weight.grad.is_sparse
        ctx.average_gradients(params)
        opt_s.step()
        opt_d.step()
    with torch.no_grad():
        full = torch.nn.functional.binary_cross_entropy_with_logits(
            head(emb(ids)).squeeze(1), y).item()
    return {"loss": full, "digest": digest(emb) + digest(head)}


def main() -> int:
    out, mode = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    ctx = distributed.init(device="cpu", timeout_s=20)
    try:
        result = run_fit(ctx) if mode == "fit" else run_sparse(ctx)
        if ctx.is_main:
            result["world_size"] = ctx.world_size
            with open(out, "w", encoding="utf-8") as fh:
                json.dump(result, fh)
        ctx.barrier()
    finally:
        distributed.teardown(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
