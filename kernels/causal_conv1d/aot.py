"""Not in the AOT C library: it holds the forward kernels of the renderer's warp neighbours and the
scan, and adding an op changes its API (out of scope here)."""
AOT_OP = None
