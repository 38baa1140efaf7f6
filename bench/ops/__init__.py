"""Per-op microbenchmarks (``python -m bench.ops``): one script per op, each timing the op's
reference, fast path, Triton kernels and ``torch.compile(reference)``, forward and
forward+backward, at the model's shapes; the shared timer, rows, files and command line are in
``harness``, the shapes in ``shapes``."""
