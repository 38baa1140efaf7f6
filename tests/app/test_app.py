"""mim.app without a browser: what the page checks before it generates (the CLI's readers and
errors, naming the uploaded file by its name), the bounds on uploads, and that gradio is
needed (and named) only by `mim app` itself."""
import subprocess
import sys
from pathlib import Path

import pytest

from mim.app import AppUnavailableError, Limits, Session, require_gradio
from mim.audio import SAMPLE_RATE, load_audio
from mim.io import MediaError, write_wav
from mim.portrait import NoFaceError

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo"


@pytest.fixture(scope="module")
def animator():
    from mim.animate import Animator

    return Animator.from_pretrained(DEMO / "mim_tiny.safetensors", device="cpu")


@pytest.fixture()
def speech(tmp_path):
    path = tmp_path / "speech_1s.wav"
    write_wav(path, load_audio(DEMO / "speech.wav")[:SAMPLE_RATE], SAMPLE_RATE)
    return path


def generate(animator, tmp_path, portrait, speech, limits=Limits(), steps=2, crop="center"):
    session = Session(animator, limits, workdir=tmp_path / "work")
    return session.generate(str(portrait), str(speech), steps=steps, guidance=2.0, seed=0, crop=crop,
                            face=0, crop_scale=1.7)


def test_a_text_file_as_the_portrait_is_named_by_its_name(animator, tmp_path, speech):
    notes = tmp_path / "upload" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("not a picture\n")
    with pytest.raises(MediaError) as error:
        generate(animator, tmp_path, notes, speech)
    assert str(error.value) == "notes.txt: not an image Pillow can read"


def test_no_face_suggests_the_centre_crop(animator, tmp_path, speech):
    with pytest.raises(NoFaceError, match="no face found in the portrait .*crop center"):
        generate(animator, tmp_path, DEMO / "portrait.png", speech, crop="face")


def test_unreadable_speech(animator, tmp_path):
    noise = tmp_path / "noise.wav"
    noise.write_bytes(b"RIFF not really a wav")
    with pytest.raises(MediaError, match=r"^noise.wav: cannot read audio"):
        generate(animator, tmp_path, DEMO / "portrait.png", noise)


def test_speech_longer_than_the_limit(animator, tmp_path, speech):
    with pytest.raises(MediaError, match=r"speech_1s.wav: the speech is 1.0 s long; this page accepts at "
                                         r"most 0.5 s \(mim app --max-seconds\)"):
        generate(animator, tmp_path, DEMO / "portrait.png", speech, limits=Limits(max_seconds=0.5))


def test_upload_larger_than_the_limit(animator, tmp_path, speech):
    with pytest.raises(MediaError, match=r"the portrait 'portrait.png' is 0.0\d+ MB; this page accepts at "
                                         r"most 0.01 MB per file \(mim app --max-upload-mb\)"):
        generate(animator, tmp_path, DEMO / "portrait.png", speech, limits=Limits(max_upload_mb=0.01))


def test_missing_inputs_and_bad_options(animator, tmp_path, speech):
    session = Session(animator, workdir=tmp_path / "work")
    with pytest.raises(MediaError, match="no portrait was given"):
        session.generate(None, str(speech), 2, 2.0, 0, "center", 0, 1.7)
    with pytest.raises(ValueError, match="steps must be at most the model's diffusion_steps = 1000"):
        session.generate(str(DEMO / "portrait.png"), str(speech), 1001, 2.0, 0, "center", 0, 1.7)
    with pytest.raises(ValueError, match="seed must be a whole number >= 0, got 0.5"):
        session.generate(str(DEMO / "portrait.png"), str(speech), 2, 2.0, 0.5, "center", 0, 1.7)
    with pytest.raises(ValueError, match="crop must be one of face, center"):
        session.generate(str(DEMO / "portrait.png"), str(speech), 2, 2.0, 0, "left", 0, 1.7)


@pytest.mark.parametrize("limits, message", [
    (dict(max_upload_mb=0), "max_upload_mb must be a positive number"),
    (dict(max_seconds=float("nan")), "max_seconds must be a positive number"),
    (dict(max_seconds=0.001), "max_seconds must allow at least"),
])
def test_limits_are_checked(limits, message):
    with pytest.raises(ValueError, match=message):
        Limits(**limits)


def test_without_gradio_the_command_names_the_extra(monkeypatch, capsys):
    from mim.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)   # `import gradio` raises ImportError
    with pytest.raises(AppUnavailableError, match=r"pip install mim-engine\[app\]"):
        require_gradio()
    assert main(["app", "--port", "0"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("mim: error: mim app needs gradio") and "pip install mim-engine[app]" in error


def test_the_other_commands_load_neither_gradio_nor_the_model():
    code = ("import sys, mim, mim.cli; mim.cli.build_parser(); "
            "print(sorted(m for m in ('gradio', 'mim.animate', 'mim.app') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['mim.app']", out   # mim.app's constants for `mim app --help`, nothing more


def test_stream_yields_frames_then_the_video(animator, tmp_path, speech):
    from mim.io import read_video

    session = Session(animator, workdir=tmp_path / "work")
    events = list(session.stream(str(DEMO / "portrait.png"), str(speech), 2, 2.0, 0, "center", 0, 1.7))
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"frame"} and len(kinds) >= 2
    indices = [value[0] for kind, value in events[:-1]]
    assert indices == sorted(set(indices)) and all(value[1] == 25 for _, value in events[:-1])
    assert all(tuple(value[2].shape) == (3, 64, 64) for _, value in events[:-1])
    out, summary = events[-1][1]
    frames, _ = read_video(out)
    assert frames.shape == (25, 3, 64, 64)
    assert "25 frames" in summary and "the first frame after" in summary


def test_a_stream_closed_early_leaves_no_video(animator, tmp_path, speech):
    session = Session(animator, workdir=tmp_path / "work")
    events = session.stream(str(DEMO / "portrait.png"), str(speech), 2, 2.0, 0, "center", 0, 1.7)
    assert next(events)[0] == "frame"
    events.close()   # the visitor left: the writer thread stops and its temporary file goes
    assert [path.name for path in (tmp_path / "work").rglob("*") if path.is_file()] == []
