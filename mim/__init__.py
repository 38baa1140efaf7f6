"""mim: the MIM audio-driven portrait animation model and its product, built on ``kernels``."""
