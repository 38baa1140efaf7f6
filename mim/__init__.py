"""mim: the MIM audio-driven portrait animation model and its product, built on ``kernels``."""

__all__ = ["Animator"]


def __getattr__(name):
    # lazy, so that `import mim.config` does not load the model, PyAV and the audio stack
    if name == "Animator":
        from mim.animate import Animator
        return Animator
    raise AttributeError(f"module 'mim' has no attribute {name!r}")
