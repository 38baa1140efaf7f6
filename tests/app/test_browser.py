"""``mim app`` in a real browser: the page is served by ``mim app`` in a subprocess (once for
the module, on a free loopback port, with the demo checkpoint) and driven by Playwright in
headless Debian Chromium (``/usr/bin/chromium``: `make test` installs it; Playwright's own
browser download needs the network).

One test does what a visitor does (upload the example portrait and a 1 s speech clip, 2 DDIM
steps, the centre crop, generate, wait for the video, download it) and checks the downloaded
video's frame count and duration; it saves a screenshot (docs/app.png is one). The others do
the same with streamed frames and with speech recorded from Chromium's fake microphone, and
upload a text file as the portrait to find the CLI's error on the page."""
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from mim.audio import SAMPLE_RATE, VIDEO_FPS, load_audio, num_video_frames
from mim.io import read_video, write_wav

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo"
CHROMIUM = Path("/usr/bin/chromium")
SPEECH_SECONDS = 1.0
SERVER_START_S = 120
GENERATE_S = 90


# Records each progress text ("motion - 50.0%", "render - 16.0%") the result area shows.
WATCH_PROGRESS = """() => {
    window.progressSeen = [];
    new MutationObserver(() => {
        const shown = (document.querySelector('#result') || {}).innerText || '';
        const found = shown.match(/(motion|render) - [0-9.]+%/);
        if (found && !window.progressSeen.includes(found[0])) window.progressSeen.push(found[0]);
    }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""

# Records each distinct image the live frame shows (by its src).
WATCH_FRAMES = """() => {
    window.framesSeen = [];
    new MutationObserver(() => {
        const image = document.querySelector('#live img');
        if (image && image.src && !window.framesSeen.includes(image.src)) window.framesSeen.push(image.src);
    }).observe(document.body, {subtree: true, childList: true, attributes: true});
}"""


@pytest.fixture(scope="module")
def server():
    """The URL of a ``mim app`` started for this module (stopped with SIGINT at the end)."""
    command = [sys.executable, "-m", "mim", "app", "--port", "0", "--device", "cpu",
               "--checkpoint", str(DEMO / "mim_tiny.safetensors")]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1)
    lines = queue.Queue()
    log = []
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout] + [lines.put(None)],
                     daemon=True).start()
    url, deadline = None, time.monotonic() + SERVER_START_S
    while url is None:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        if line is None:
            process.kill()
            pytest.fail(f"`mim app` did not say it was serving within {SERVER_START_S} s "
                        f"(exit status {process.poll()}); its output:\n{''.join(log)}")
        log.append(line)
        if line.startswith("mim app: serving on "):
            url = line.split()[4]
    assert url.startswith("http://127.0.0.1:"), url   # loopback by default
    yield url
    # Ctrl-C stops the app within its CLOSE_TIMEOUT_S even while a browser tab holds a connection
    # open (the browser fixture outlives this one)
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail("`mim app` did not stop within 20 s of SIGINT")
    assert time.monotonic() - started < 10, "`mim app` took over 10 s to stop after SIGINT"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"the browser tests need Debian's chromium at {CHROMIUM}: `make test` installs it "
                    f"(apt-get install --no-install-recommends chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        pytest.fail(f"the browser tests need playwright ({error}): `make venv` installs it (the dev extra)")
    with sync_playwright() as playwright:
        # a fake microphone (a beeping tone) that needs no permission prompt
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser, server):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 1000},
                                  permissions=["microphone"])
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    tab.goto(server)
    tab.locator("#generate").wait_for()
    yield tab
    context.close()


@pytest.fixture()
def short_speech(tmp_path):
    """The first second of the example speech, as a wav."""
    path = tmp_path / "speech_1s.wav"
    write_wav(path, load_audio(DEMO / "speech.wav")[: int(SPEECH_SECONDS * SAMPLE_RATE)], SAMPLE_RATE)
    return path


def test_generate_and_download(page, short_speech, tmp_path):
    page.locator("#portrait input[type=file]").set_input_files(str(DEMO / "portrait.png"))
    page.locator("#portrait-preview img").wait_for()
    page.locator("#speech input[type=file]").set_input_files(str(short_speech))
    steps = page.locator("#steps input[type=number]")
    steps.fill("2")
    steps.press("Enter")
    page.locator("#crop").get_by_label("center").check()   # the demo portrait is procedural: no face
    page.evaluate(WATCH_PROGRESS)
    page.locator("#generate").click()
    video = page.locator("#result video")
    video.wait_for(timeout=GENERATE_S * 1000)
    assert video.get_attribute("src")
    page.wait_for_function("document.querySelector('#result video').readyState >= 1")
    shown_seconds = page.evaluate("document.querySelector('#result video').duration")
    page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
    with page.expect_download() as download:
        page.locator("#download").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)

    frames, fps = read_video(saved)
    expected = num_video_frames(int(SPEECH_SECONDS * SAMPLE_RATE))
    assert frames.shape == (expected, 3, 64, 64)   # the centre crop: the tiny model's 64 x 64 frames
    assert fps == VIDEO_FPS
    with av.open(str(saved)) as container:
        seconds = container.duration / av.time_base
    assert abs(seconds - expected / VIDEO_FPS) < 0.1, seconds
    assert abs(shown_seconds - seconds) < 0.1, (shown_seconds, seconds)
    assert "frames at" in page.locator("#summary").inner_text()
    progress = page.evaluate("window.progressSeen")
    assert progress, "no progress bar (motion or render) was shown while generating"


def test_speech_from_the_microphone(page, tmp_path):
    page.locator("#portrait input[type=file]").set_input_files(str(DEMO / "portrait.png"))
    page.locator('#speech [aria-label="Record audio"]').click()
    page.locator("#speech button", has_text="Record").first.click()
    page.wait_for_timeout(1200)
    page.locator("#speech button", has_text="Stop").first.click()
    page.locator('#speech [aria-label="Play"]').wait_for()   # the recording is the speech now
    steps = page.locator("#steps input[type=number]")
    steps.fill("2")
    steps.press("Enter")
    page.locator("#crop").get_by_label("center").check()
    page.locator("#generate").click()
    page.locator("#result video").wait_for(timeout=GENERATE_S * 1000)
    with page.expect_download() as download:
        page.locator("#download").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    frames, _ = read_video(saved)
    with av.open(str(saved)) as container:
        assert container.streams.audio, "the recorded speech is not muxed in"
        seconds = float(container.streams.audio[0].duration * container.streams.audio[0].time_base)
    # about the 1.2 s recorded (the browser's recorder adds or drops a little at either end)
    assert 0.8 < seconds < 2.5, seconds
    assert abs(frames.shape[0] - seconds * VIDEO_FPS) <= 2, (frames.shape, seconds)


def test_text_file_as_portrait_shows_the_error(page, short_speech, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture\n")
    page.locator("#portrait input[type=file]").set_input_files(str(notes))
    page.locator("#speech input[type=file]").set_input_files(str(short_speech))
    page.locator("#generate").click()
    message = page.get_by_text("notes.txt: not an image Pillow can read").first
    message.wait_for()
    assert "Traceback" not in page.content()


def test_streamed_frames_then_the_video(page, short_speech, tmp_path):
    page.locator("#portrait input[type=file]").set_input_files(str(DEMO / "portrait.png"))
    page.locator("#speech input[type=file]").set_input_files(str(short_speech))
    steps = page.locator("#steps input[type=number]")
    steps.fill("2")
    steps.press("Enter")
    page.locator("#crop").get_by_label("center").check()
    page.locator("#stream").get_by_label("Stream: show the frames as they are made").check()
    page.evaluate(WATCH_FRAMES)
    page.locator("#generate").click()
    page.locator("#result video").wait_for(timeout=GENERATE_S * 1000)
    page.screenshot(path=str(tmp_path / "app_streamed.png"), full_page=True)
    shown = page.evaluate("window.framesSeen")
    assert len(shown) >= 2, shown   # frames were shown one after another before the video came
    with page.expect_download() as download:
        page.locator("#download").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    frames, fps = read_video(saved)
    assert frames.shape == (num_video_frames(int(SPEECH_SECONDS * SAMPLE_RATE)), 3, 64, 64) and fps == VIDEO_FPS
    assert "the first frame after" in page.locator("#summary").inner_text()
