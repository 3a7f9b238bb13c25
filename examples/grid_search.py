"""A parallel grid search, with a progress bar that moves as results arrive.

The model is ridge regression on polynomial features, fitted with numpy. The grid crosses
4 polynomial degrees with 5 regularization strengths (20 points); each point is one task,
which fits the model on the training split and returns its error on the validation split.
The data (640 kB) is put into the object store once, and every task gets its ref.

`aray.as_completed` yields the refs as their tasks finish, so the progress bar moves with
each result, whatever order the tasks finish in. The best parameters are printed at the end.

Run it with:

    python examples/grid_search.py
"""

import itertools
import sys
import time

import numpy as np

import aray

DEGREES = [1, 3, 5, 9]
ALPHAS = [1e-6, 1e-4, 1e-2, 1e0, 1e2]


def make_data(n=20_000, noise=0.1, seed=0):
    """Noisy samples of a smooth function on [-1, 1], split into training and validation."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, n)
    y = np.sin(3 * x) + 0.5 * x**2 + rng.normal(0, noise, n)
    split = int(0.8 * n)
    return {"x_train": x[:split], "y_train": y[:split], "x_val": x[split:], "y_val": y[split:]}


def features(x, degree):
    return np.vander(x, degree + 1, increasing=True)  # 1, x, x**2, ..., x**degree


@aray.remote
def evaluate(data, degree, alpha):
    """Fit ridge regression with these parameters; return the validation error (MSE)."""
    time.sleep(0.1)  # stands in for a longer training run
    X = features(data["x_train"], degree)
    w = np.linalg.solve(X.T @ X + alpha * np.eye(degree + 1), X.T @ data["y_train"])
    residual = features(data["x_val"], degree) @ w - data["y_val"]
    return float(np.mean(residual**2))


def progress(done, total, best, width=30):
    filled = width * done // total
    bar = "#" * filled + "." * (width - filled)
    sys.stdout.write(f"\r[{bar}] {done:2d}/{total}  best MSE so far {best:.5f}")
    sys.stdout.flush()


if __name__ == "__main__":
    aray.init(num_cpus=2)
    start = time.time()
    data_ref = aray.put(make_data())  # stored once, read by every task
    grid = list(itertools.product(DEGREES, ALPHAS))
    params_of = {evaluate.remote(data_ref, degree, alpha): (degree, alpha)
                 for degree, alpha in grid}
    print(f"searching {len(grid)} points: degree in {DEGREES}, alpha in {ALPHAS}")

    scores = {}
    for ref in aray.as_completed(list(params_of)):
        scores[params_of[ref]] = aray.get(ref)
        progress(len(scores), len(grid), min(scores.values()))
    print()

    (degree, alpha), mse = min(scores.items(), key=lambda item: item[1])
    print(f"best: degree={degree}, alpha={alpha:g}, validation MSE {mse:.5f} "
          f"(the noise alone gives about 0.01); {time.time() - start:.1f} s on 2 CPUs")
    aray.shutdown()
