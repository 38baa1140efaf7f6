"""``python -m bench.ops [--device cuda|cpu] [--ops a,b] [--providers p,q] [--out-dir DIR] [--smoke]``:
every op's microbenchmark (``bench/ops/<op>.py``) in one run, into ops.csv, ops.json and ops.png."""
import sys

from bench.ops.harness import main

sys.exit(main())
