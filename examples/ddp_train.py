"""Data-parallel training of an elman.torch.RNN on N processes (CPU, gloo) with torchrun:

    torchrun --standalone --nproc_per_node=2 examples/ddp_train.py

Every process holds a replica of the model and takes its share of each global batch;
DistributedDataParallel averages the gradients across processes after each backward, so all
replicas take the same optimizer step. The task: is the sum of 20 random bits above 10?
"""

import argparse
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import elman
import elman.torch


class Classifier(torch.nn.Module):
    """Many-to-one: an elman.torch.RNN over the sequence, a linear head on its last state."""

    def __init__(self, hidden_size=32):
        super().__init__()
        self.rnn = elman.torch.RNN(1, hidden_size, batch_first=True)
        self.head = torch.nn.Linear(hidden_size, 1)

    def forward(self, x):                     # x (B, T, 1)
        _, h_n = self.rnn(x)                  # h_n (1, B, H)
        return self.head(h_n[-1])             # logits (B, 1)


def bits(n, T, generator):
    x = torch.randint(0, 2, (n, T, 1), generator=generator).float()
    return x, (x.sum(dim=(1, 2)) > T / 2).float()[:, None]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch, all processes")
    parser.add_argument("--seq-len", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args()
    if "RANK" not in os.environ:  # run with plain python: say how to start the processes
        raise SystemExit("ddp_train.py runs one process per replica under torchrun: "
                         "torchrun --standalone --nproc_per_node=2 examples/ddp_train.py")

    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be divisible by {world} processes")
    # torchrun gives each process OMP_NUM_THREADS=1 when it starts several; share the cores.
    elman.set_num_threads(max(1, (os.cpu_count() or 1) // world))

    torch.manual_seed(0)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    model = DistributedDataParallel(Classifier())
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    data = torch.Generator().manual_seed(1)  # the same global batches on every process

    for step in range(1, args.steps + 1):
        x, y = bits(args.batch_size, args.seq_len, data)
        mine = slice(rank, None, world)       # this process's share of the global batch
        loss = loss_fn(model(x[mine]), y[mine])
        opt.zero_grad()
        loss.backward()                       # DDP all-reduces (averages) the gradients here
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == args.steps:
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            if rank == 0:
                print(f"step {step:4d}  loss {mean_loss.item() / world:.4f}", flush=True)

    if rank == 0:
        x, y = bits(2048, args.seq_len, torch.Generator().manual_seed(2))
        with torch.no_grad():
            accuracy = ((model.module(x) > 0).float() == y).float().mean().item()
        print(f"{world} processes, held-out accuracy {accuracy:.3f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Leave without interpreter teardown: torch's gloo threads can abort it ("terminate called
    # without an active exception") after a clean destroy_process_group on a loaded machine.
    sys.stdout.flush()
    os._exit(0)
