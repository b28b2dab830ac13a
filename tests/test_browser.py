"""The demo page in a real browser: headless Chromium (Debian's ``chromium``, driven by
Playwright's Python package pointed at it) loads /ui/ from the server ``headway demo`` starts
(clients.demo.serve_arguments, in a process of its own), and a person's path through it
happens: typed and spoken commands are answered, spoken back and carried out by the robot;
the strategy switch starts a session with that strategy. The microphone is Chromium's fake
capture device playing a WAV spoken by espeak-ng at test time.

Screenshots go to out/screenshots/. What the page measured (window.headway.metrics) is
printed: run with ``-s`` to see the latencies. Marked ``browser``. They need Playwright and
Debian's Chromium, which ``make test`` installs; without them they fail, saying so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from clients.demo import serve_arguments
from clients.server_process import ServerProcess

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "out" / "screenshots"
COMMAND = "go to the red cube"
SPEECH_RATE = 48000
LEAD_S, TAIL_S = 0.5, 12.0  # silence around the command: the fake microphone loops its file


def spoken_wav(path: Path, text: str) -> float:
    """``text`` spoken by espeak-ng into ``path`` (16-bit mono at 48 kHz, with silence before
    and after); returns where the speech ends in the file, in seconds."""
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text], check=True)
    with wave.open(str(raw)) as w:
        rate, pcm = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), np.int16)
    voiced = np.flatnonzero(np.abs(pcm) > 300)
    pcm = pcm[voiced[0]: voiced[-1] + 1].astype(np.float32)
    t = np.arange(int(len(pcm) * SPEECH_RATE / rate)) / SPEECH_RATE
    speech = np.interp(t, np.arange(len(pcm)) / rate, pcm)
    out = np.concatenate([np.zeros(int(LEAD_S * SPEECH_RATE)), speech, np.zeros(int(TAIL_S * SPEECH_RATE))])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SPEECH_RATE)
        w.writeframes(out.astype(np.int16).tobytes())
    return LEAD_S + len(speech) / SPEECH_RATE


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    path = tmp_path_factory.mktemp("speech") / "command.wav"
    return path, spoken_wav(path, COMMAND)


@pytest.fixture(scope="module")
def server():
    with ServerProcess(serve_arguments(), timeout_s=180) as process:
        yield process


@pytest.fixture(scope="module")
def browser(speech):
    from playwright import sync_api

    assert Path(CHROMIUM).exists(), "the browser tests need Debian's chromium (make test installs it)"
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={speech[0]}", "--autoplay-policy=no-user-gesture-required"])
        yield chromium
        chromium.close()


class Page:
    """One tab on the demo page; JavaScript errors fail the test."""

    def __init__(self, browser, server, name: str):
        self.name = name
        self.page = browser.new_page(viewport={"width": 1320, "height": 760})
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(f"http://127.0.0.1:{server.port}/ui/")
        self.page.wait_for_function("window.headway && window.headway.ready", timeout=20_000)

    def js(self, expression: str):
        return self.page.evaluate(expression)

    def wait(self, expression: str, timeout_s: float = 20.0):
        self.page.wait_for_function(expression, timeout=timeout_s * 1000)
        return self.js(expression)

    def serves(self, *endpoints: str) -> bool:
        return all(self.js(f"window.headway.info.endpoints.includes({json.dumps(e)})") for e in endpoints)

    def needs(self, *what: str) -> None:
        info = self.js("window.headway.info")
        have = set(info["endpoints"]) | ({"table"} if self.js("!!window.headway.loop") else set())
        missing = [w for w in what if w not in have]
        assert not missing, f"the demo server serves no {', '.join(missing)} (make demo's embedded models)"

    def screenshot(self) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{self.name}.png"))

    def close(self) -> None:
        self.screenshot()
        self.page.close()
        assert self.errors == []


@pytest.fixture
def page(browser, server, request):
    tab = Page(browser, server, request.node.name.removeprefix("test_"))
    yield tab
    tab.close()


def red_cube_table(page: Page) -> None:
    """A table with a red cube on it, the gripper away from it."""
    page.js("window.headway.tableWith('red', 'cube')")


RED_CUBE_DISTANCE = ("(() => { const t = window.headway.table;"
                     " const o = t.objects.find((o) => o.color === 'red' && o.shape === 'cube');"
                     " return Math.hypot(t.p[0] - o.x, t.p[1] - o.y); })()")


def wait_for_reach(page: Page, timeout_s: float = 12.0) -> dict:
    """The robot's meters once the gripper is within 5 cm of its target."""
    return page.wait("(() => { const r = window.headway.metrics.robot;"
                     " return r && r.distance < 0.05 ? r : null; })()", timeout_s)


def test_the_page_loads_and_says_what_it_serves(page):
    status = page.js("document.getElementById('status').textContent")
    assert status == "all models served" or status.startswith("not served here:")
    assert page.js("window.headway.info.endpoints.includes('/v1/policy')")


def test_a_typed_command_is_answered_and_the_robot_goes_to_the_red_cube(page):
    page.needs("/v1/chat", "table")
    red_cube_table(page)
    start = page.js(RED_CUBE_DISTANCE)  # the gripper's distance to the red cube before the command
    page.page.fill("#text", COMMAND)
    page.page.press("#text", "Enter")
    turn = page.wait("(() => { const t = window.headway.metrics.turns[0]; return t && t.finish_reason ? t : null; })()")
    print("\ntyped turn:", json.dumps(turn))
    assert turn["goal"] == {"action": "reach", "color": "red", "shape": "cube"}
    assert "red cube" in turn["reply"].lower()
    assert page.js("window.headway.table.kind") == "reach"
    robot = wait_for_reach(page)
    print("robot:", json.dumps(robot))
    assert page.js(RED_CUBE_DISTANCE) < 0.05 < start


def test_a_spoken_command_is_heard_answered_aloud_and_carried_out(page, speech):
    page.needs("/v1/asr", "/v1/chat", "/v1/tts", "table")
    red_cube_table(page)
    page.page.click("#mic")
    turn = page.wait("(() => { const t = window.headway.metrics.turns[0];"
                     " return t && t.speech_end_to_first_audio_ms !== null && t.speech_end_to_first_audio_ms !== undefined ? t : null; })()",
                     30)
    page.wait("window.headway.metrics.audio.played_samples > 4000")
    turn = page.js("window.headway.metrics.turns[0]")
    print("\nspoken turn:", json.dumps(turn))
    print(f"end of speech -> first audio of the reply: {turn['speech_end_to_first_audio_ms']} ms "
          f"(last word recognised {turn['speech_end_to_last_word_ms']} ms, first token {turn['ttft_ms']} ms after "
          f"prompt_end, first audio {turn['time_to_first_audio_ms']} ms after the first words went to speech synthesis)")
    assert "red cube" in turn["text"]
    assert turn["goal"] == {"action": "reach", "color": "red", "shape": "cube"}
    assert page.js("window.headway.metrics.audio.played_samples") > 0
    wait_for_reach(page)


@pytest.mark.parametrize("strategy", ["sync", "naive", "rtc+future"])
def test_the_strategy_switch_starts_a_session_with_that_strategy(page, strategy):
    page.needs("table")
    page.page.select_option("#strategy", strategy)
    summary = page.wait(f"(() => {{ const r = window.headway.metrics.robot; return r && r.strategy === {json.dumps(strategy)}"
                        " && r.chunks >= 5 ? r : null; })()")
    assert summary["connected"]


def test_injected_latency_shows_as_a_longer_measured_delay(page):
    page.needs("table")
    fast = page.wait("(() => { const r = window.headway.metrics.robot; return r && r.chunks >= 10 ? r : null; })()")
    page.page.select_option("#inject", "100")
    slow = page.wait("(() => { const r = window.headway.metrics.robot; return r && r.inject_ms === 100"
                     " && r.chunks >= 10 ? r : null; })()")
    print(f"\nmeasured d: {fast['d_p50']} ticks without, {slow['d_p50']} ticks with 100 ms injected")
    assert slow["d_p50"] >= fast["d_p50"] + 4  # 100 ms at 50 Hz: 5 ticks


def test_the_spoken_part_of_a_streamed_json_reply_is_found_however_the_tokens_split_it(page):
    reply = 'Going to the "red" cube.\nNow!'
    text = json.dumps({"reply": reply, "goal": {"action": "reach", "color": "red", "shape": "cube"}})
    pieces = page.page.evaluate("""async (text) => {
        const {ReplyExtractor} = await import('/ui/app.js');
        const out = [];
        for (let size = 1; size <= 7; size++) {
          const e = new ReplyExtractor(); let said = '';
          for (let i = 0; i < text.length; i += size) said += e.feed(text.slice(i, i + size));
          out.push(said);
        }
        const plain = new ReplyExtractor();
        out.push(plain.feed('Hello ') + plain.feed('there.'));
        return out;
    }""", text)
    assert pieces == [reply] * 7 + ["Hello there."]


def test_the_page_merges_chunks_by_the_rule_of_chunking_merge(page):
    # The page's port of clients.action_buffer.ActionBuffer, run on the same random sequence of
    # chunk arrivals and control ticks as the Python one: the same action at every tick.
    from clients.action_buffer import ActionBuffer

    rng = np.random.default_rng(0)
    events, tick = [], 0
    for _ in range(120):
        if rng.random() < 0.3:
            h = int(rng.integers(1, 8))
            events.append({"chunk": rng.standard_normal((h, 2)).round(3).tolist(),
                           "start": int(tick + rng.integers(-6, 3)), "now": tick})
        else:
            events.append({"pop": tick})
            tick += 1
    python, buffer = [], ActionBuffer(2)
    for e in events:
        if "chunk" in e:
            arrival = buffer.merge(np.array(e["chunk"], np.float32), e["start"], e["now"])
            python.append([arrival.took, arrival.first_tick, arrival.skipped])
        else:
            action = buffer.pop(e["pop"])
            python.append(None if action is None else [round(float(x), 3) for x in action])
    javascript = page.page.evaluate("""async (events) => {
        const {ActionBuffer} = await import('/ui/robot.js');
        const b = new ActionBuffer(), out = [];
        for (const e of events) {
          if (e.chunk) { const a = b.merge(e.chunk, e.start, e.now); out.push([a.took, a.firstTick, a.skipped]); }
          else { const a = b.pop(e.pop); out.push(a === null ? null : a.map((x) => Math.round(x * 1000) / 1000)); }
        }
        return out;
    }""", events)
    assert javascript == python


def test_the_page_steps_the_table_as_its_python_dynamics_do(page):
    import torch

    from chunking.dynamics import table
    rng = np.random.default_rng(1)
    actions = rng.uniform(-1.5, 1.5, (200, 2)).round(3)
    state = torch.zeros(1, 10)
    python = []
    for a in actions:  # the simulator clips each action before the step (docs/table_task.md)
        state = table.step(state, torch.tensor(np.clip(a, -1, 1), dtype=torch.float32)[None], 0.02)
        python.append(state[0, :4].tolist())
    javascript = page.page.evaluate("""async (actions) => {
        const {Table} = await import('/ui/robot.js');
        const t = new Table(1); t.p = [0, 0]; t.v = [0, 0];
        return actions.map((a) => { t.step(a, 0.02); return [...t.p, ...t.v]; });
    }""", actions.tolist())
    assert np.allclose(javascript, python, atol=1e-5)


def test_typing_over_a_spoken_reply_stops_it_and_cancels_it(page):
    page.needs("/v1/chat", "/v1/tts")
    red_cube_table(page)
    page.page.fill("#text", "which objects do you see")
    page.page.press("#text", "Enter")
    page.wait("window.headway.events.some((e) => e.kind === 'first_audio')")
    page.page.fill("#text", COMMAND)  # the first keystroke of a new prompt is a barge-in
    page.wait("window.headway.events.some((e) => e.kind === 'barge_in' && e.turn === 0)", 5)
    assert page.js("window.headway.metrics.audio.queued") == 0 or page.wait("window.headway.metrics.audio.queued === 0", 2)
    page.page.press("#text", "Enter")
    turn = page.wait("(() => { const t = window.headway.metrics.turns[1]; return t && t.finish_reason ? t : null; })()")
    print("\nturn after the barge-in:", json.dumps(turn))
    # The next turn is answered in full. What it answers is the language model's (#10: it grounds
    # reach commands 85% of the time, a follow-up after its own wrong list of the table less often).
    assert turn["finish_reason"] == "stop" and turn["reply"]
