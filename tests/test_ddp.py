"""Gradients are averaged across DDP ranks: after training on different data, ranks hold equal weights."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from adjoint_sampling.config import load_config
from adjoint_sampling.graphs import graph_from_smiles
from adjoint_sampling.trainer import DistContext, Trainer, teardown_distributed
from energies import EnergyConfig, make_energy


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    cfg = load_config("tiny", ["train.epochs=2", "sde.train_nfe=8", "sde.eval_nfe=8", "train.eval_every=0"])
    energy = make_energy(EnergyConfig(name="mmff"))
    mols = [graph_from_smiles("CCO"), graph_from_smiles("CCN")]
    trainer = Trainer(cfg, mols, energy, out_dir, ctx=DistContext(rank, world), show_progress=False)
    trainer.fit()
    flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    torch.save({"params": flat, "x1": trainer.buffer.entries[0].x1}, os.path.join(out_dir, f"rank{rank}.pt"))
    del trainer  # its DDP reducer must go before the process group (else teardown can deadlock)
    teardown_distributed()


def test_ddp_ranks_stay_in_sync(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert not torch.equal(r0["x1"], r1["x1"])  # each rank simulated its own samples
    assert torch.allclose(r0["params"], r1["params"], atol=1e-6)  # yet the weights agree: averaged gradients
    assert (tmp_path / "checkpoint.pt").exists()
