"""A joblib backend that runs on aray: Ray's ``ray.util.joblib``.

After :func:`register_aray` (or Ray's name, :func:`register_ray`), the ``"aray"`` backend
runs joblib's work (and so scikit-learn's ``n_jobs``) on a
:class:`~aray.util.multiprocessing.Pool`, whose actors spread over the cluster::

    from aray.util.joblib import register_aray
    register_aray()
    with joblib.parallel_backend("aray"):
        GridSearchCV(..., n_jobs=-1).fit(X, y)

``n_jobs=-1`` is the cluster's CPU count. Parallel calls nested inside the work use joblib's
default for nested calls (threads in the actor, then none), not the cluster again.

Needs joblib (``pip install 'aray[joblib]'``).
"""

from __future__ import annotations

from typing import Any

try:
    # absolute imports: this is joblib itself, not this module
    from joblib.parallel import (
        AutoBatchingMixin,
        ParallelBackendBase,
        register_parallel_backend,
    )
except ImportError as err:  # pragma: no cover - joblib is a test dependency
    raise ImportError("aray.util.joblib needs joblib: pip install 'aray[joblib]' "
                      "(or pip install joblib)") from err

import aray

from .multiprocessing import AsyncResult, Pool

__all__ = ["ArayBackend", "register_aray", "register_ray"]


class ArayBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's work on an aray :class:`~aray.util.multiprocessing.Pool`, one pool per
    ``Parallel`` call, as Ray's ``RayBackend``.

    Args:
        nesting_level: joblib's.
        inner_max_num_threads: joblib's.
        aray_remote_args: actor options for the pool's actors (Ray's name,
            ``ray_remote_args``, works too); also accepted by ``Parallel(...)``.
        **kwargs: joblib's other backend arguments.

    Example:
        >>> import joblib
        >>> from aray.util.joblib import register_aray
        >>> register_aray()
        >>> with joblib.parallel_backend("aray", n_jobs=2):
        ...     joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(3))
        [0, 1, 2]
    """

    supports_retrieve_callback = True
    supports_timeout = True
    supports_return_generator = True
    supports_sharedmem = False
    uses_threads = False

    def __init__(self, nesting_level: int | None = None,
                 inner_max_num_threads: int | None = None,
                 aray_remote_args: dict | None = None, ray_remote_args: dict | None = None,
                 **kwargs: Any) -> None:
        self.remote_args = aray_remote_args or ray_remote_args
        self._pool: Pool | None = None
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads, **kwargs)

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """How many actors a ``Parallel`` call with ``n_jobs`` gets: negative counts
        from the cluster's CPUs (``-1``: all of them), as joblib counts from the machine's.

        Example:
            >>> from aray.util.joblib import ArayBackend
            >>> ArayBackend().effective_n_jobs(3)
            3
        """
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            if not aray.is_initialized():
                aray.init()  # as Ray's backend: start (or join, with ARAY_ADDRESS) a cluster
            cpus = int(aray.cluster_resources().get("CPU", 1))
            return max(cpus + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs: int = 1, parallel: Any = None, prefer: str | None = None,
                  require: str | None = None, aray_remote_args: dict | None = None,
                  ray_remote_args: dict | None = None, **backend_kwargs: Any) -> int:
        """Start the pool of a ``Parallel`` call (joblib calls this); returns its size.

        Example:
            >>> from aray.util.joblib import ArayBackend
            >>> backend = ArayBackend()
            >>> backend.configure(n_jobs=1)
            1
            >>> backend.terminate()
        """
        n_jobs = self.effective_n_jobs(n_jobs)
        self.parallel = parallel
        remote_args = aray_remote_args or ray_remote_args or self.remote_args
        if remote_args is not None:
            self.remote_args = remote_args
        self._pool = Pool(processes=n_jobs, aray_remote_args=self.remote_args)
        return n_jobs

    def submit(self, func: Any, callback: Any = None) -> AsyncResult:
        """Run a batch of joblib's calls in the pool; ``callback(result)`` once done.

        Example:
            >>> from aray.util.joblib import ArayBackend
            >>> backend = ArayBackend()
            >>> _ = backend.configure(n_jobs=1)
            >>> backend.submit(lambda: 42).get(timeout=30)
            42
            >>> backend.terminate()
        """
        if self._pool is None:
            raise RuntimeError("the aray backend is not configured (joblib calls configure)")
        result = self._pool.apply_async(func)
        if callback is not None:
            result._on_done(callback)
        return result

    def retrieve_result_callback(self, out: AsyncResult) -> Any:
        """The value of a finished batch (joblib calls this); raises its error.

        Example:
            >>> from aray.util.joblib import ArayBackend
            >>> backend = ArayBackend()
            >>> _ = backend.configure(n_jobs=1)
            >>> backend.retrieve_result_callback(backend.submit(lambda: 1))
            1
            >>> backend.terminate()
        """
        return out.get()

    def terminate(self) -> None:
        """End the pool once its work is done (joblib calls this after each ``Parallel``).

        Example:
            >>> from aray.util.joblib import ArayBackend
            >>> ArayBackend().terminate()
        """
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            pool.join()
        if hasattr(self, "reset_batch_stats"):
            self.reset_batch_stats()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Kill the pool's actors (a batch failed); start a new pool if ``ensure_ready``.

        Example:
            >>> from aray.util.joblib import ArayBackend
            >>> ArayBackend().abort_everything(ensure_ready=False)
        """
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()
            pool.join()
        if ensure_ready:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel,
                           **getattr(self.parallel, "_backend_kwargs", {}))


def register_aray() -> None:
    """Register the ``"aray"`` backend of joblib: ``joblib.parallel_backend("aray")``.

    Example:
        >>> import joblib
        >>> from aray.util.joblib import register_aray
        >>> register_aray()
        >>> with joblib.parallel_backend("aray", n_jobs=2):
        ...     joblib.Parallel()(joblib.delayed(pow)(i, 2) for i in range(4))
        [0, 1, 4, 9]
    """
    register_parallel_backend("aray", ArayBackend)


def register_ray() -> None:
    """Ray's name: register the same backend as ``"ray"`` (and as ``"aray"``), so code
    written for Ray's ``parallel_backend("ray")`` runs unchanged.

    Example:
        >>> import joblib
        >>> from aray.util.joblib import register_ray
        >>> register_ray()
        >>> with joblib.parallel_backend("ray", n_jobs=1):
        ...     joblib.Parallel()(joblib.delayed(abs)(-1) for _ in range(2))
        [1, 1]
    """
    register_parallel_backend("ray", ArayBackend)
    register_aray()
