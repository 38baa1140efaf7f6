"""Packaging for mim-engine (see shared DESIGN.md: distribution ``mim-engine``)."""

from setuptools import find_packages, setup

setup(
    name="mim-engine",
    version="0.1.0",
    description=(
        "Triton-kernel training and inference engine for MIM, "
        "Mamba-enhanced implicit motion learning for audio-driven portrait animation"
    ),
    # only the installed packages: bench/ and tools/ are scripts run from a checkout
    # (`make bench`, `python -m tools.compile_report`), never shipped
    packages=find_packages(include=["kernels", "kernels.*", "mim", "mim.*"]),
    # the tuner's winners per GPU architecture (python -m tools.tune), read by the launchers
    package_data={"kernels": ["tuned/*.json"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "triton>=3.2",
        "numpy",
        "safetensors",
        "numba>=0.60",  # the compiled CPU selective scan (kernels/selective_scan/fast_path.py)
        # the model and its products (mim/)
        "pyyaml",  # configs
        "pillow",  # portraits in and out
        "dlib-bin",  # the default face detector (mim/face.py): HOG model built in, no download
        "av>=12",  # PyAV: mp4 decode/encode, audio muxing, compressed audio
        "soundfile",  # wav/flac
        "tqdm",  # progress bars
        "webdataset",  # training shards (mim prepare writes them, mim.data.shards reads them)
        "tensorboard",  # training logs
        "nvtx",  # NVTX ranges around the stages of `mim profile` (a no-op without a CUDA profiler)
    ],
    entry_points={"console_scripts": ["mim = mim.cli:main"]},
    extras_require={
        # GPU-only accelerations; the engine runs without them (own paths are used instead).
        # causal-conv1d and flash-attn compile against the installed torch: install them
        # with --no-build-isolation (the Makefile does).
        "cuda": ["causal-conv1d", "flash-attn", "nvtx"],
        # setuptools: tests/test_packaging.py builds the wheel without build isolation (offline);
        # 70.1 has bdist_wheel built in
        # scikit-image: its astronaut photo is the real face tests/mim/test_face.py detects
        # python_speech_features: the MFCC tests/mim/test_metric_nets.py checks SyncNet's against
        # playwright: tests/app drives Debian's chromium (`make test` installs it) through it
        "dev": ["pytest", "pytest-benchmark", "pytest-xdist", "scikit-image", "matplotlib", "python_speech_features",
                "onnx", "onnxruntime", "onnxscript", "playwright",
                "setuptools>=70.1"],
        # the web page, `mim app` (mim/app.py, docs/app.md)
        "app": ["gradio>=6"],
    },
)
