"""The web page (``mim app``): a portrait and speech in, the talking video out, in a browser.

A Gradio Blocks page over one :class:`mim.animate.Animator`: the portrait is uploaded (or one of
the examples picked), the speech uploaded or recorded with the microphone; the sampling
(DDIM steps, guidance, seed) and framing (``crop`` face|center, the face's index, the crop
square's scale: :mod:`mim.portrait`) options are those of ``mim animate``; a progress bar
follows the motion windows and the rendered frames; the result is shown in a video player with
a download button.

Uploads are read and checked here before anything is generated, with the errors of the command
line (:func:`mim.io.read_image`, :func:`mim.audio.load_audio`, :class:`mim.portrait.NoFaceError`),
naming the uploaded file by its own name; each is shown on the page as one line, never as a
traceback. Inputs are bounded: an upload's size (``max_upload_mb``, refused by the server
before it is stored, and checked again here) and the speech's duration (``max_seconds``).

The server binds to 127.0.0.1 unless told otherwise (``--host``). gradio is an optional
dependency (``pip install mim-engine[app]``), imported only by the functions that build and
serve the page, so ``import mim`` and the other commands neither need nor load it.
"""

from __future__ import annotations

import html
import logging
import os
import queue
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch

from mim.audio import MIN_AUDIO_SAMPLES, SAMPLE_RATE, VIDEO_FPS, load_audio, num_video_frames
from mim.io import MediaError, read_image

__all__ = ["AppUnavailableError", "DEFAULT_HOST", "DEFAULT_MAX_SECONDS", "DEFAULT_MAX_UPLOAD_MB",
           "DEFAULT_PORT", "INSTALL_HINT", "examples", "Job", "Limits", "Session", "build_page", "free_port",
           "read_portrait", "read_speech", "require_gradio", "serve"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
CLOSE_TIMEOUT_S = 3.0       # how long Ctrl-C waits for open browser connections before exiting
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_SECONDS = 60.0
INSTALL_HINT = "pip install mim-engine[app]"

log = logging.getLogger(__name__)


def examples() -> Tuple[Path, Path]:
    """The example portrait and speech of a checkout (examples/demo/, beside the demo model)."""
    from mim.animate import DEFAULT_CHECKPOINT   # (here: `mim app --help` need not load the model)

    return DEFAULT_CHECKPOINT.parent / "portrait.png", DEFAULT_CHECKPOINT.parent / "speech.wav"


class AppUnavailableError(RuntimeError):
    """gradio, which the page needs, is not installed."""


def require_gradio():
    """The ``gradio`` module, or :class:`AppUnavailableError` naming the extra to install.
    Gradio's analytics (requests to its servers) are switched off first."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError as error:
        raise AppUnavailableError(f"mim app needs gradio, which cannot be imported ({error}); "
                                  f"install it with `{INSTALL_HINT}` (`make venv` does in a checkout)") from error
    return gradio


@dataclass(frozen=True)
class Limits:
    """Bounds on what a visitor may send: ``max_upload_mb`` per uploaded file, ``max_seconds`` of
    speech."""
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_seconds: float = DEFAULT_MAX_SECONDS

    def __post_init__(self):
        for name in ("max_upload_mb", "max_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) \
                    or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.max_seconds * SAMPLE_RATE < MIN_AUDIO_SAMPLES:
            raise ValueError(f"max_seconds must allow at least {MIN_AUDIO_SAMPLES} samples "
                             f"({MIN_AUDIO_SAMPLES / SAMPLE_RATE:.3f} s), got {self.max_seconds!r}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def _upload(path, what: str, limits: Limits) -> Path:
    if path is None or path == "":
        raise MediaError(f"no {what} was given: upload one (or pick an example)")
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"the {what} {path.name!r} was not received (no such file)")
    size = path.stat().st_size
    if size > limits.max_upload_bytes:
        raise MediaError(f"the {what} {path.name!r} is {size / 2**20:.3g} MB; this page accepts at most "
                         f"{limits.max_upload_mb:g} MB per file (mim app --max-upload-mb)")
    return path


def _by_name(error: Exception, path: Path) -> MediaError:
    """The reader's error, naming the file as the visitor knows it (its name), not where the
    server stored it."""
    return MediaError(str(error).replace(str(path), path.name))


def read_portrait(path, limits: Limits = Limits()) -> torch.Tensor:
    """The uploaded portrait as (3, H, W) float in [0, 1]: :func:`mim.io.read_image`'s checks
    (not an image, truncated, too many pixels), and the upload's size."""
    path = _upload(path, "portrait", limits)
    try:
        return read_image(path)
    except MediaError as error:
        raise _by_name(error, path) from error


def read_speech(path, limits: Limits = Limits()) -> np.ndarray:
    """The uploaded or recorded speech as 16 kHz mono float32: :func:`mim.audio.load_audio`'s
    checks (unreadable, no audio stream, no samples, NaN), at least ``MIN_AUDIO_SAMPLES`` and at
    most ``limits.max_seconds``."""
    path = _upload(path, "speech", limits)
    try:
        samples = load_audio(path)
    except MediaError as error:
        raise _by_name(error, path) from error
    seconds = samples.size / SAMPLE_RATE
    if samples.size < MIN_AUDIO_SAMPLES:
        raise MediaError(f"{path.name}: {samples.size} samples is too short; at least {MIN_AUDIO_SAMPLES} "
                         f"({MIN_AUDIO_SAMPLES / SAMPLE_RATE * 1000:.0f} ms at {SAMPLE_RATE} Hz) are needed")
    if seconds > limits.max_seconds:
        raise MediaError(f"{path.name}: the speech is {seconds:.1f} s long; this page accepts at most "
                         f"{limits.max_seconds:g} s (mim app --max-seconds)")
    return samples


def _whole(value, name: str, lowest: int) -> int:
    if value is None or not float(value).is_integer() or value < lowest:
        raise ValueError(f"{name} must be a whole number >= {lowest}, got {value!r}")
    return int(value)


@dataclass
class Job:
    """One generation's checked inputs: the portrait (3, H, W), the speech (16 kHz), the
    sampling and framing options, and the mp4 to write."""
    image: torch.Tensor
    samples: np.ndarray
    options: dict
    out: Path

    @property
    def frames(self) -> int:
        return num_video_frames(self.samples.size)

    def summary(self, started: float, first_frame: Optional[float] = None) -> str:
        seconds = time.perf_counter() - started
        first = "" if first_frame is None else f", the first frame after {first_frame - started:.1f} s"
        return (f"{self.frames} frames at {VIDEO_FPS} fps ({self.samples.size / SAMPLE_RATE:.2f} s of "
                f"speech), made in {seconds:.1f} s{first}")


class _Stopped(Exception):
    """The visitor left or cancelled: the streamed video is not finished (nor kept)."""


class Session:
    """What the page runs: an Animator, the limits, and a folder for the videos it writes (each
    generation in its own subfolder; the previous ones are removed when a new one starts, as
    Gradio has copied them into its own cache by then)."""

    def __init__(self, animator, limits: Limits = Limits(), workdir: Optional[Path] = None):
        self.animator = animator
        self.limits = limits
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="mim-app-"))
        self.workdir.mkdir(parents=True, exist_ok=True)

    def job(self, portrait, speech, steps, guidance, seed, crop, face, crop_scale) -> Job:
        """Check the options and read the uploads (the errors of ``mim animate``, see the module's
        docstring); the mp4 goes to a fresh subfolder."""
        from mim.portrait import CROP_MODES

        most = self.animator.config.motion.diffusion_steps
        steps = _whole(steps, "steps", 1)
        if steps > most:
            raise ValueError(f"steps must be at most the model's diffusion_steps = {most}, got {steps}")
        seed = _whole(seed, "seed", 0)
        face = _whole(face, "face", 0)
        if crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {', '.join(CROP_MODES)}, got {crop!r}")
        if guidance is None or not np.isfinite(guidance):
            raise ValueError(f"guidance must be a finite number, got {guidance!r}")
        if crop_scale is None or not np.isfinite(crop_scale) or crop_scale <= 0:
            raise ValueError(f"crop scale must be a positive number, got {crop_scale!r}")
        image = read_portrait(portrait, self.limits)
        samples = read_speech(speech, self.limits)
        for old in self.workdir.iterdir():
            shutil.rmtree(old, ignore_errors=True)
        folder = self.workdir / uuid.uuid4().hex
        folder.mkdir()
        options = dict(steps=steps, seed=seed, guidance_scale=float(guidance), crop=crop, face=face,
                       crop_scale=float(crop_scale))
        return Job(image, samples, options, folder / f"{Path(portrait).stem}_talking.mp4")

    def generate(self, portrait, speech, steps, guidance, seed, crop, face, crop_scale) -> Tuple[Path, str]:
        """The whole clip at once (:meth:`mim.animate.Animator.animate_to_file`, as ``mim
        animate``; its progress bars are tqdm's): (the mp4, a one-line summary)."""
        started = time.perf_counter()
        job = self.job(portrait, speech, steps, guidance, seed, crop, face, crop_scale)
        self.animator.animate_to_file(job.image, job.samples, job.out, progress=True, **job.options)
        return job.out, job.summary(started)

    def stream(self, portrait, speech, steps, guidance, seed, crop, face, crop_scale,
               chunk_seconds: float = 0.2) -> Iterator[Tuple[str, object]]:
        """The speech fed to :meth:`mim.animate.Animator.stream` in ``chunk_seconds`` chunks:
        yields ("frame", (index, total, frame (3, H, W))) as frames are made (the newest one
        when the caller falls behind), then ("done", (the mp4, a one-line summary)). The frames are written to the mp4 as they come (by a
        thread: the encoder pulls them), so memory does not grow with the clip. Closing the
        generator early stops the generation and leaves no file."""
        from mim.io import write_video

        started = time.perf_counter()
        job = self.job(portrait, speech, steps, guidance, seed, crop, face, crop_scale)
        step = max(1, int(chunk_seconds * SAMPLE_RATE))
        chunks = (job.samples[start:start + step] for start in range(0, job.samples.size, step))
        frames = self.animator.stream(job.image, chunks, **job.options)
        made: "queue.Queue" = queue.Queue()
        stop = threading.Event()

        def passed_on():
            for index, frame in enumerate(frames):
                if stop.is_set():
                    raise _Stopped()
                made.put(("frame", (index, job.frames, frame)))
                yield frame

        def write():
            try:
                write_video(job.out, passed_on(), fps=VIDEO_FPS, audio=job.samples, sample_rate=SAMPLE_RATE)
                made.put(("written", None))
            except BaseException as error:   # handed to the page's thread, which raises it
                made.put(("failed", error))

        writer = threading.Thread(target=write, name="mim-app-writer", daemon=True)
        writer.start()
        first_frame = None
        try:
            while True:
                kind, value = made.get()
                while kind == "frame" and not made.empty():   # behind: only the newest frame is shown
                    kind, value = made.get()
                if kind == "failed":
                    raise value
                if kind == "written":
                    break
                first_frame = first_frame if first_frame is not None else time.perf_counter()
                yield kind, value
        finally:
            stop.set()
            writer.join()
        yield "done", (job.out, job.summary(started, first_frame))

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def _one_line(error: BaseException) -> str:
    """The error as one line of text, escaped (Gradio shows an error's message as HTML, and a
    file's name is the visitor's to choose)."""
    return html.escape(" ".join(str(error).split()) or type(error).__name__)


def _shown(pixels: np.ndarray, side: int = 256) -> np.ndarray:
    """A small frame (H, W, 3) enlarged by a whole factor (pixel copies) to about ``side``."""
    factor = max(1, side // max(pixels.shape[:2]))
    return pixels.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else pixels


def build_page(session: Session):
    """The Gradio Blocks page over ``session`` (not launched)."""
    from mim.face import DEFAULT_CROP_SCALE
    from mim.portrait import CROP_MODES, to_uint8_image

    gr = require_gradio()
    config = session.animator.config
    example = [str(path) for path in examples()]
    has_example = all(Path(path).is_file() for path in example)

    def run(portrait, speech, streamed, steps, guidance, seed, crop, face, crop_scale,
            progress=gr.Progress(track_tqdm=True)):
        try:
            if streamed:
                for kind, value in session.stream(portrait, speech, steps, guidance, seed, crop, face, crop_scale):
                    if kind == "done":
                        out, summary = value
                    else:
                        index, total, frame = value
                        progress((index + 1) / total, desc="frames", unit="frame")
                        yield _shown(to_uint8_image(frame)), gr.skip(), gr.skip(), gr.skip()
            else:
                progress(0.0, desc="reading the inputs")
                out, summary = session.generate(portrait, speech, steps, guidance, seed, crop, face, crop_scale)
        except (ValueError, TypeError, OSError) as error:   # the CLI's user errors: MediaError, NoFaceError, ...
            raise gr.Error(_one_line(error), print_exception=False, duration=None) from error
        except Exception as error:
            log.exception("mim app: generation failed")
            raise gr.Error(f"generation failed: {type(error).__name__}: {_one_line(error)} "
                           f"(the server's log has the traceback)", print_exception=False, duration=None) from error
        yield gr.skip(), str(out), gr.DownloadButton(value=str(out), visible=True), summary

    def preview(portrait):
        if portrait is None:
            return None
        try:
            read_portrait(portrait, session.limits)
        except (ValueError, OSError) as error:
            raise gr.Error(_one_line(error), print_exception=False, duration=None) from error
        return portrait

    with gr.Blocks(title="mim: talking portrait", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as page:
        gr.Markdown("## mim: a talking portrait from speech\nUpload a portrait and speech (or record "
                    "it), then generate. The model animates a square around the face "
                    "(*face* crop) or the centre square (*center*).")
        with gr.Row():
            with gr.Column():
                portrait = gr.File(label="Portrait (an image)", type="filepath", elem_id="portrait")
                shown = gr.Image(label="Portrait", interactive=False, height=200, elem_id="portrait-preview")
                speech = gr.Audio(label="Speech", sources=["upload", "microphone"], type="filepath",
                                  elem_id="speech")
                if has_example:
                    gr.Examples(examples=[example], inputs=[portrait, speech], label="Example")
                streamed = gr.Checkbox(value=False, label="Stream: show the frames as they are made",
                                       elem_id="stream",
                                       info="the speech is fed in 200 ms chunks (Animator.stream); the "
                                            "speech's global feature is then its mean so far, so the "
                                            "frames differ slightly from a whole-clip generation")
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Accordion("Options", open=True):
                    with gr.Row():
                        steps = gr.Slider(1, config.motion.diffusion_steps, value=config.motion.sample_steps,
                                          step=1, label="DDIM steps", elem_id="steps")
                        guidance = gr.Number(value=config.motion.guidance_scale,
                                             label="Guidance scale (1 = off)", elem_id="guidance")
                        seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="seed")
                    crop = gr.Radio(list(CROP_MODES), value="face", label="Crop", elem_id="crop",
                                    info="face: detect the face and paste the frames back into the "
                                         "portrait; center: the centre square")
                    with gr.Row():
                        face = gr.Number(value=0, precision=0, minimum=0, label="Face (0 = the largest)",
                                         elem_id="face")
                        crop_scale = gr.Number(value=DEFAULT_CROP_SCALE, minimum=0.1,
                                               label="Crop scale (face-box sides)", elem_id="crop-scale")
            with gr.Column():
                live = gr.Image(label="Frames as they are made", interactive=False, visible=False,
                                height=256, elem_id="live")
                video = gr.Video(label="Result", interactive=False, elem_id="result")
                download = gr.DownloadButton("Download the video", visible=False, elem_id="download")
                summary = gr.Markdown(elem_id="summary")
        portrait.change(preview, inputs=portrait, outputs=shown)
        streamed.change(lambda on: gr.Image(visible=on), inputs=streamed, outputs=live)
        generate.click(run, inputs=[portrait, speech, streamed, steps, guidance, seed, crop, face, crop_scale],
                       outputs=[live, video, download, summary])
    return page


def free_port(host: str) -> int:
    """A port on ``host`` that nothing listens on now (the OS's pick)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def serve(checkpoint=None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, device: str = "auto",
          limits: Limits = Limits(), backend: Optional[str] = None) -> int:
    """Load ``checkpoint`` (None: the demo model), serve the page on ``host``:``port`` (0: a free
    port) until interrupted (Ctrl-C or SIGTERM). Prints ``mim app: serving on URL`` once the page
    answers."""
    from mim.animate import Animator

    gr = require_gradio()
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"--port must be in 0 .. 65535 (0 = a free port), got {port!r}")
    animator = Animator.from_pretrained(checkpoint, device=device, backend=backend)
    session = Session(animator, limits)
    page = build_page(session)
    page.queue(default_concurrency_limit=1)
    allowed: List[str] = [str(path) for path in examples() if path.is_file()]
    system_fonts = ["ui-sans-serif", "system-ui", "sans-serif"]   # no web fonts: the page works offline
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        page.launch(server_name=host, server_port=port or free_port(host), prevent_thread_lock=True,
                    quiet=True, show_error=False, share=False, max_file_size=limits.max_upload_bytes,
                    allowed_paths=allowed, footer_links=[], enable_monitoring=False, ssr_mode=False,
                    theme=gr.themes.Default(font=system_fonts, font_mono=["ui-monospace", "monospace"]))
        print(f"mim app: serving on {page.local_url} (Ctrl-C to stop)", flush=True)
        page.block_thread()
    finally:
        signal.signal(signal.SIGTERM, previous)
        # Gradio's close waits for every open connection to end, and a browser tab keeps one open:
        # give it a few seconds, then exit anyway (its server thread is a daemon)
        closer = threading.Thread(target=page.close, daemon=True)
        closer.start()
        closer.join(timeout=CLOSE_TIMEOUT_S)
        session.close()
    return 0
