"""elman.torch.RNN inside DistributedDataParallel: 2 processes on 127.0.0.1 (gloo), each
training on half of every batch, end with the parameters of one process trained on the full
batches. This file is also the worker (``python test_ddp.py RANK WORLD PORT DIR``)."""

import datetime
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch") if __name__ != "__main__" else __import__("torch")
import elman.torch as et  # noqa: E402  (needs torch)

pytestmark = pytest.mark.slow

K, B, T, I, H = 8, 6, 7, 3, 5
ROOT = pathlib.Path(__file__).resolve().parents[1]


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = et.RNN(I, H, num_layers=2, bidirectional=True, batch_first=True,
                          dtype=torch.float64)
        self.head = torch.nn.Linear(2 * H, 1, dtype=torch.float64)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def train(model, xs, ys, rows):
    """K steps of mean-squared error on rows ``rows`` of each batch, clip, SGD with momentum.
    With mean losses on equal shares, DDP's gradient average is the full batch's gradient."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for k in range(K):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(xs[k, rows]), ys[k, rows])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model


def worker(rank, world, port, folder):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=40))
    setup = torch.load(os.path.join(folder, "setup.pt"))
    model = Model()
    model.load_state_dict(setup["state"])
    ddp = DistributedDataParallel(model)
    share = B // world
    train(ddp, setup["xs"], setup["ys"], slice(rank * share, (rank + 1) * share))
    if rank == 0:
        torch.save(model.state_dict(), os.path.join(folder, "ddp.pt"))
    dist.barrier()
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(world, folder, timeout=45):
    port = free_port()
    env = dict(os.environ, GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, __file__, str(r), str(world), str(port), folder],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(world)]
    deadline = time.monotonic() + timeout
    try:
        logs = [p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0]
                .decode(errors="replace") for p in procs]
    finally:
        for p in procs:  # whatever happened, leave no process behind
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, f"worker failed:\n{log}"


def test_ddp_two_processes_equal_full_batch_training(tmp_path):
    from conftest import assert_close
    torch.manual_seed(0)
    state = Model().state_dict()
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(K, B, T, I, generator=g, dtype=torch.float64)
    ys = torch.randn(K, B, 1, generator=g, dtype=torch.float64)
    torch.save({"state": state, "xs": xs, "ys": ys}, tmp_path / "setup.pt")
    run_workers(2, str(tmp_path))
    ddp_state = torch.load(tmp_path / "ddp.pt")

    single = Model()
    single.load_state_dict(state)
    train(single, xs, ys, slice(None))
    moved = False
    for name, p in single.state_dict().items():
        # float64: the two half-batch gradient sums are added in another order than one sum.
        assert_close(ddp_state[name].numpy(), p.numpy(), np.float64, what=name)
        moved |= not torch.equal(p, state[name])
    assert moved


def test_ddp_example_runs_with_torchrun():
    """The README's command, shortened: torchrun on 2 processes."""
    script = ROOT / "examples" / "ddp_train.py"
    if not script.exists():
        pytest.skip("examples/ is not next to the tests (installed-package run)")
    env = dict(os.environ, GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node=2", str(script), "--steps", "20"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out = proc.communicate(timeout=50)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:  # torchrun and its workers share the new session
            os.killpg(proc.pid, 9)
            proc.wait()
    assert proc.returncode == 0, out
    assert "step   20  loss" in out and "2 processes, held-out accuracy" in out


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    # Leave without interpreter teardown: torch's gloo threads can abort it ("terminate called
    # without an active exception") after a clean destroy_process_group on a loaded machine.
    sys.stdout.flush()
    os._exit(0)
