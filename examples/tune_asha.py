"""Tune a small numpy model with ASHA on a two-node cluster, with `aray.tune`.

The model is a one-hidden-layer network (numpy only) that learns to classify points of two
interleaved spirals; it is trained by full-batch gradient descent, one epoch per
`tune.report`. The search draws 12 configs (learning rate, hidden units, weight decay) at
random; ASHA (asynchronous successive halving) stops a trial at 2, 4 or 8 epochs when its
validation accuracy is not in the top half of the trials that got there before it, so
most of the compute goes to the promising configs. Each trial saves a checkpoint (its
weights) every few epochs; the best trial's weights are read back at the end.

As examples/cluster.py does, it starts a head node and a second node with the command line
(`aray start`), one CPU each, in a session directory of its own, so that two trials run at
once, one on each node; the experiment's files go to a temporary directory, which both
nodes see (they are on this machine: on several machines, it would be a shared file
system).

Run it with:

    python examples/tune_asha.py
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile

SESSION_ROOT = tempfile.mkdtemp(prefix="aray-ex-")  # short: unix socket paths are limited
os.environ["ARAY_SESSION_ROOT"] = SESSION_ROOT
ENV = dict(os.environ)

import numpy as np  # noqa: E402

import aray  # noqa: E402
from aray import tune  # noqa: E402
from aray.tune.schedulers import ASHAScheduler  # noqa: E402

EPOCHS = 16


def spirals(n=400, noise=0.25, seed=0):
    """Two interleaved spirals, labelled 0 and 1, split into training and validation."""
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.uniform(0, 1, n)) * 3 * np.pi
    label = rng.integers(0, 2, n)
    sign = np.where(label == 1, 1.0, -1.0)
    x = np.stack([sign * t * np.cos(t), sign * t * np.sin(t)], axis=1) / 10
    x += rng.normal(0, noise / 10 * 3, x.shape)
    split = n * 3 // 4
    return x[:split], label[:split], x[split:], label[split:]


def train_spirals(config):
    """One trial: train the network with `config`, reporting validation accuracy per epoch."""
    x, y, x_val, y_val = spirals()
    rng = np.random.default_rng(0)
    hidden = config["hidden"]
    w1, b1 = rng.normal(0, 1, (2, hidden)), np.zeros(hidden)
    w2, b2 = rng.normal(0, 1 / np.sqrt(hidden), hidden), 0.0
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint:  # resume after a failure (or a restored experiment)
        with checkpoint.as_directory() as d:
            saved = np.load(os.path.join(d, "weights.npz"))
            w1, b1, w2, b2 = saved["w1"], saved["b1"], saved["w2"], float(saved["b2"])
            start = int(saved["epoch"])
    for epoch in range(start + 1, EPOCHS + 1):
        for _ in range(50):  # 50 steps of gradient descent per epoch
            h = np.tanh(x @ w1 + b1)
            p = 1 / (1 + np.exp(-(h @ w2 + b2)))
            grad = (p - y) / len(y)  # of the mean cross-entropy, at the logits
            dh = np.outer(grad, w2) * (1 - h**2)
            w2 -= config["lr"] * (h.T @ grad + config["decay"] * w2)
            b2 -= config["lr"] * grad.sum()
            w1 -= config["lr"] * (x.T @ dh + config["decay"] * w1)
            b1 -= config["lr"] * dh.sum(axis=0)
        p_val = 1 / (1 + np.exp(-(np.tanh(x_val @ w1 + b1) @ w2 + b2)))
        accuracy = float(np.mean((p_val > 0.5) == y_val))
        checkpoint = None
        if epoch % 4 == 0:
            d = tempfile.mkdtemp()
            np.savez(os.path.join(d, "weights.npz"), w1=w1, b1=b1, w2=w2, b2=b2, epoch=epoch)
            checkpoint = tune.Checkpoint.from_directory(d)
        tune.report({"accuracy": accuracy, "node": aray.get_runtime_context().get_node_id()[:8]},
                    checkpoint=checkpoint)  # the Tuner copies the checkpoint's files
        if checkpoint:
            shutil.rmtree(d)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def aray_cli(*args):
    """Run `aray ARGS...` (as `python -m aray`, from this interpreter)."""
    print("$ aray", " ".join(args))
    subprocess.run([sys.executable, "-m", "aray", *args], env=ENV, check=True,
                   capture_output=True, text=True, timeout=60)


def main(storage):
    port = free_port()
    aray_cli("start", "--head", "--port", str(port), "--num-cpus", "1")
    aray_cli("start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1")
    aray.init(address=f"127.0.0.1:{port}")
    print(f"{len(aray.nodes())} nodes, {aray.cluster_resources()['CPU']:g} CPUs")

    tuner = tune.Tuner(
        train_spirals,
        param_space={"lr": tune.loguniform(1e-2, 3.0), "hidden": tune.choice([8, 16, 32]),
                     "decay": tune.loguniform(1e-5, 1e-2)},
        tune_config=tune.TuneConfig(
            metric="accuracy", mode="max", num_samples=12,
            scheduler=ASHAScheduler(max_t=EPOCHS, grace_period=2, reduction_factor=2)),
        run_config=tune.RunConfig(name="spirals", storage_path=storage))
    results = tuner.fit()

    best = results.get_best_result()
    epochs = sorted(r.metrics["training_iteration"] for r in results)
    nodes = {r.metrics["node"] for r in results}
    print(f"epochs per trial: {epochs} ({sum(epochs)} of {EPOCHS * len(results)}: ASHA "
          f"stopped {sum(e < EPOCHS for e in epochs)} trials early); trials ran on "
          f"{len(nodes)} nodes")
    print(f"best: lr={best.config['lr']:.3g}, hidden={best.config['hidden']}, "
          f"decay={best.config['decay']:.2g}: validation accuracy "
          f"{best.metrics['accuracy']:.3f}")
    with best.checkpoint.as_directory() as d:
        weights = np.load(os.path.join(d, "weights.npz"))
        print(f"its last checkpoint is of epoch {int(weights['epoch'])}, in {best.checkpoint.path}")
    assert results.num_errors == 0 and len(nodes) == 2
    aray.shutdown()


if __name__ == "__main__":
    storage = tempfile.mkdtemp(prefix="tune-ex-")
    try:
        main(storage)
    finally:
        if aray.is_initialized():
            aray.shutdown()
        aray_cli("stop")
        shutil.rmtree(SESSION_ROOT, ignore_errors=True)
        shutil.rmtree(storage, ignore_errors=True)
