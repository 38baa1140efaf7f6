"""AOT_OP is None: the C library (``python -m tools.aot``) holds the whole-sequence forward kernels
(the warp path, the normalization and the selective scan); the one-step decode with a state cache
runs from Python only."""
AOT_OP = None
