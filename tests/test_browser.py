"""JupyterLab for real, in headless Chromium: run a notebook, move a widget, see it respond.

Screenshots and timings land in artifacts/browser/ (git-ignored).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
import time
from pathlib import Path

import pytest
from labserver import free_port, lab_flags, running_lab

try:
    from playwright.sync_api import expect

    # Every check on the page waits for the state it asserts (widget updates arrive one by one, and
    # late on a loaded machine): Playwright's expect retries until it holds, here for up to 30 s.
    expect.set_options(timeout=30_000)
except ImportError:  # the browser fixture says what is missing
    expect = None

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _cannot_start(why: str):
    message = (
        f"browser tests cannot start: {why}. Install Debian's Chromium (`apt-get install chromium`, "
        "as `.ci/run` and `make test` do when run as root) and the dev extra (`pip install -e .[dev]`)."
    )
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)  # never a silent skip in CI
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _cannot_start("the playwright package is not installed")
    if not os.access(CHROMIUM, os.X_OK):
        _cannot_start(f"{CHROMIUM} not found")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 with a token, serving a temporary copy of the notebooks."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    port, token = free_port(), secrets.token_hex(16)
    argv = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        *lab_flags(port, token),
        f"--ServerApp.root_dir={root / 'notebooks'}",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run commands as the menus do
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]  # offline
    env = {"JUPYTER_RUNTIME_DIR": str(root / "runtime"), "JUPYTERLAB_WORKSPACES_DIR": str(root / "workspaces")}
    with running_lab(argv, cwd=root, port=port, token=token, env=env) as server:
        server.notebooks = root / "notebooks"  # what the lab serves: tests may add notebooks there
        yield server


@pytest.fixture
def page(browser):
    """JupyterLab's default layout as a learner first sees it: 1400x1000, the file browser open."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    yield page
    page.close()


@pytest.fixture(autouse=True)
def kernels_shut_down_after(lab):
    """Each test's notebook kernels are shut down when it ends: left running, a notebook's server and
    its widgets' threads took CPU from every later test's kernel (all share one JupyterLab)."""
    yield
    for session in lab.api("sessions"):
        lab.delete(f"sessions/{session['id']}")


# Every element of a widget whose content is wider than its box: a clipped read-out, a control cut
# off, a figure that brings a scroll bar. The output area around the widget is checked too. The
# insides of a slider's track are not: noUiSlider hangs the handle half over each end by design.
OVERFLOWS = """root => {
    const area = root.closest('.jp-OutputArea-output') || root;
    return [area, root, ...root.querySelectorAll('*')]
        .filter(el => !el.closest('.slider-container'))
        .filter(el => el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 1)
        .map(el => `${el.tagName.toLowerCase()}.${[...el.classList].join('.')} ` +
                   `(${el.scrollWidth} px of content in ${el.clientWidth} px): ${el.innerText.slice(0, 40)}`);
}"""


def assert_fits(page, widget, name: str) -> None:
    """The widget fits the notebook at the default layout; its screenshot is kept for people to look at."""
    assert page.locator("#filebrowser").is_visible(), "the file browser should be open, as it is by default"
    widget.scroll_into_view_if_needed()
    widget.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    overflowing = widget.evaluate(OVERFLOWS)
    assert overflowing == [], f"{name} overflows at 1400x1000 with the file browser open: {overflowing}"


def open_and_run_all(page, lab, notebook: str) -> tuple[str, dict]:
    """Open ``notebook``, run all cells, and wait — by asking the server — for the kernel to finish."""
    timings = {}
    start = time.monotonic()
    page.goto(lab.url(f"/lab/tree/{notebook}?reset"))
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    page.evaluate("() => window.jupyterapp.shell.activateById('filebrowser')")  # as a new user has it
    kernel = lab.kernel_for(notebook)
    lab.wait_idle(kernel, timeout=120)
    timings["open_s"] = round(time.monotonic() - start, 1)
    before = lab.api(f"kernels/{kernel}")["last_activity"]
    start = time.monotonic()
    # Not awaited on purpose: the REST API, not the page, says when the kernel is done.
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    lab.wait_idle(kernel, since=before, timeout=600)
    # Idle between two cells is not done: a loaded machine can leave the front end seconds
    # behind the kernel. Done is no cell queued or running ([*]), and the kernel idle after that.
    page.wait_for_function(
        "() => ![...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]"
        ".some(e => e.textContent.includes('*'))",
        timeout=600_000,
    )
    lab.wait_idle(kernel, timeout=120)
    timings["run_all_s"] = round(time.monotonic() - start, 1)
    return kernel, timings


def run_and_find(page, lab, notebook: str, widget_css: str):
    """Run all of ``notebook``, check it ran cleanly, and scroll to the first widget of that class."""
    kernel, timings = open_and_run_all(page, lab, notebook)
    assert_ran_cleanly(page)
    widget = page.locator(widget_css).first
    widget.scroll_into_view_if_needed()
    return kernel, timings, widget


def drag(page, slider, dx: float) -> None:
    """Drag an ipywidgets slider's handle ``dx`` pixels, as a hand would: a stream of values."""
    box = slider.locator(".noUi-handle").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + dx, y, steps=10)
    page.mouse.up()


def assert_ran_cleanly(page):
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    assert errors.count() == 0, errors.first.inner_text()[:2000]
    prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_text_contents()  # off-screen cells too
    assert prompts and all(re.fullmatch(r"\[\d+\]:", p.strip()) for p in prompts), prompts


def test_optimizer_playground_responds_in_jupyterlab(page, lab):
    kernel, timings, playground = run_and_find(page, lab, "03_optimizers.ipynb", ".maaskit-optimizer-playground")
    image = playground.locator("img")
    image.wait_for(timeout=30_000)
    before = image.get_attribute("src")
    assert_fits(page, playground, "03_playground")

    slider = playground.locator(".widget-hslider", has_text="learning rate")
    readout = slider.locator(".widget-readout")
    old_lr = readout.inner_text()
    # fine enough to find the stability edge by hand: a 40 px drag changes the rate by less than x2.6
    track = slider.locator(".noUi-target").bounding_box()["width"]
    assert 10 ** (4 * 40 / track) < 2.6, f"4 decades in {track:.0f} px"
    timings["lr_track_px"], timings["lr_factor_per_40_px"] = round(track), round(10 ** (4 * 40 / track), 2)
    start = time.monotonic()
    drag(page, slider, 60)
    page.wait_for_function(
        "([img, old]) => img.getAttribute('src') !== old", arg=[image.element_handle(), before], timeout=30_000
    )
    timings["redraw_after_drag_s"] = round(time.monotonic() - start, 2)
    lab.wait_idle(kernel, timeout=60)
    page.screenshot(path=str(ARTIFACTS / "03_playground_after.png"))

    new_lr = readout.inner_text()
    assert float(new_lr) > float(old_lr), (old_lr, new_lr)
    assert "diverged" in playground.inner_text() or "ok" in playground.inner_text()
    assert_fits(page, playground, "03_playground_after_drag")
    assert_ran_cleanly(page)
    (ARTIFACTS / "03_timings.json").write_text(json.dumps(timings, indent=1))
    print("browser timings:", timings)


def dashboard_step(dashboard) -> int:
    match = re.search(r"step (\d+)/", dashboard.locator(".maaskit-status").inner_text())
    return int(match.group(1)) if match else -1


def test_training_dashboard_trains_and_stops_in_jupyterlab(page, lab):
    kernel, timings, dashboard = run_and_find(page, lab, "04_training_cnns.ipynb", ".maaskit-training-dashboard")
    status = dashboard.locator(".maaskit-status")
    # the notebook's own blocking fit ran to the end (the view renders a moment after scrolling)
    page.wait_for_function("el => el.innerText.endsWith('done')", arg=status.element_handle(), timeout=30_000)
    assert_fits(page, dashboard, "04_dashboard")

    # Ask for far more epochs than the test will wait for, through the slider's readout.
    readout = dashboard.locator(".widget-slider", has_text="epochs").locator(".widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type("200")
    page.keyboard.press("Enter")
    expect(readout).to_have_text("200")

    start = time.monotonic()
    dashboard.get_by_role("button", name="Train").click()
    page.wait_for_function(
        "el => /epoch \\d+\\/200 · step [1-9]/.test(el.innerText)", arg=status.element_handle(), timeout=60_000
    )
    timings["first_step_shown_s"] = round(time.monotonic() - start, 2)
    step, curves = dashboard_step(dashboard), dashboard.locator(".maaskit-curves").inner_html()
    # The kernel is not blocked while the background thread trains: the server sees it idle.
    assert lab.api(f"kernels/{kernel}")["execution_state"] == "idle"
    assert dashboard.get_by_role("button", name="Train").is_disabled()
    # (the SVG is replaced on each redraw, so look it up afresh rather than hold on to one node)
    page.wait_for_function(
        "old => document.querySelector('.maaskit-training-dashboard .maaskit-curves').innerHTML !== old",
        arg=curves,
        timeout=30_000,
    )
    page.wait_for_function(  # and training goes on in the background
        "([el, old]) => +(/step (\\d+)\\//.exec(el.innerText) || [0, -1])[1] > old",
        arg=[status.element_handle(), step],
        timeout=60_000,
    )
    page.screenshot(path=str(ARTIFACTS / "04_dashboard_training.png"))

    # At the fit's end the dashboard updates its displayed output (the final picture, for headless runs), and
    # JupyterLab renders the widget anew, a new node, after the status says "stopped": count the replacement.
    page.evaluate(
        """() => { window.dashboardsReplaced = 0; new MutationObserver(ms => { for (const m of ms)
             for (const n of m.removedNodes) if (n.nodeType === 1 && n.matches('.maaskit-training-dashboard'))
               window.dashboardsReplaced++; }).observe(document.body, {subtree: true, childList: true}); }"""
    )
    start = time.monotonic()
    dashboard.get_by_role("button", name="Stop").click()
    page.wait_for_function(
        "el => el.innerText.includes('stopped: stop requested')", arg=status.element_handle(), timeout=60_000
    )
    page.wait_for_function("() => window.dashboardsReplaced > 0", timeout=60_000)  # the locators find the new one
    timings["stop_shown_s"] = round(time.monotonic() - start, 2)
    summary = dashboard.locator(".maaskit-summary")
    expect(summary).to_contain_text("stopped: stop requested")
    expect(summary).to_contain_text("test accuracy")  # the history is kept
    expect(dashboard.get_by_role("button", name="Train")).to_be_enabled()
    # Nothing trains on after Stop: the kernel sends no widget update while it settles idle (a
    # training thread would redraw several times a second), and the step shown stays put.
    stopped_at = dashboard_step(dashboard)
    lab.wait_idle(kernel, timeout=60)
    assert dashboard_step(dashboard) == stopped_at
    page.screenshot(path=str(ARTIFACTS / "04_dashboard_stopped.png"))
    assert_fits(page, dashboard, "04_dashboard_stopped")
    assert_ran_cleanly(page)
    (ARTIFACTS / "04_timings.json").write_text(json.dumps(timings, indent=1))
    print("browser timings:", timings)


def test_gradient_inspector_follows_the_step_slider_in_jupyterlab(page, lab):
    kernel, timings, inspector = run_and_find(page, lab, "05_inspecting_gradients.ipynb", ".maaskit-gradient-inspector")
    image = inspector.locator("img")
    image.wait_for(timeout=30_000)
    diagnosis = inspector.locator(".maaskit-diagnosis")
    page.wait_for_function(
        "el => el.innerText.includes('vanishing gradients')", arg=diagnosis.element_handle(), timeout=30_000
    )  # the first run shown is the sigmoid net
    before = image.get_attribute("src")
    slider = inspector.locator(".widget-hslider", has_text="step")
    readout = slider.locator(".widget-readout")
    expect(readout).to_have_text("405")  # the last record: 41 steps x 10 epochs, every 5th
    assert_fits(page, inspector, "05_inspector")

    start = time.monotonic()
    drag(page, slider, -200)  # towards the first steps
    page.wait_for_function(
        "([img, old]) => img.getAttribute('src') !== old", arg=[image.element_handle(), before], timeout=30_000
    )
    timings["redraw_after_drag_s"] = round(time.monotonic() - start, 2)
    lab.wait_idle(kernel, timeout=60)
    expect(readout).not_to_have_text("405")
    assert int(readout.inner_text()) < 405
    page.screenshot(path=str(ARTIFACTS / "05_inspector_after.png"))
    assert_ran_cleanly(page)
    (ARTIFACTS / "05_timings.json").write_text(json.dumps(timings, indent=1))
    print("browser timings:", timings)


def test_endpoint_console_sends_an_image_in_jupyterlab(page, lab):
    kernel, timings, console = run_and_find(page, lab, "06_serving.ipynb", ".maaskit-endpoint-console")
    status = console.locator(".maaskit-console-status")
    # the notebook's own console.send() ran; now send another test image with the buttons
    page.wait_for_function("el => / ms/.test(el.innerText)", arg=status.element_handle(), timeout=30_000)
    assert_fits(page, console, "06_console")
    slider = console.locator(".widget-slider", has_text="test image")
    readout = slider.locator(".widget-readout")
    image = console.locator("img")
    shown = image.get_attribute("src")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type("7")
    page.keyboard.press("Enter")
    # the picture follows the slider before anything is sent
    page.wait_for_function(
        "([img, old]) => img.getAttribute('src') !== old", arg=[image.element_handle(), shown], timeout=30_000
    )
    # the status line is a separate widget: its own update may arrive after the picture's
    expect(status).to_contain_text(re.compile(r"test image 7\b.*press Send", re.S), timeout=30_000)
    before = status.inner_text()
    start = time.monotonic()
    console.get_by_role("button", name="Send").click()
    page.wait_for_function(
        "([el, old]) => el.innerText !== old && / ms/.test(el.innerText)",
        arg=[status.element_handle(), before],
        timeout=30_000,
    )
    timings["send_shown_s"] = round(time.monotonic() - start, 2)
    expect(status).to_contain_text("true label")
    page.screenshot(path=str(ARTIFACTS / "06_console_send.png"))
    console.locator(".widget-text", has_text="requests").locator("input").fill("50")
    console.get_by_role("button", name="Load test").click()
    expect(status).to_contain_text(re.compile(r"requests/s.*\b0 failed|\b0 failed.*requests/s", re.S), timeout=60_000)
    lab.wait_idle(kernel, timeout=60)
    page.screenshot(path=str(ARTIFACTS / "06_console_load_test.png"))
    assert_fits(page, console, "06_console_load_test")
    (ARTIFACTS / "06_timings.json").write_text(json.dumps(timings, indent=1))
    print("browser timings:", timings)


def test_endpoint_console_explains_an_image_in_jupyterlab(page, lab):
    kernel, timings, console = run_and_find(page, lab, "08_explaining_predictions.ipynb", ".maaskit-endpoint-console")
    status = console.locator(".maaskit-console-status")
    # the notebook's own console.explain() ran; now pick another method and press Explain
    expect(status).to_contain_text("integrated gradients: why", timeout=30_000)
    assert_fits(page, console, "08_console")
    image = console.locator("img")
    shown = image.get_attribute("src")
    console.locator(".widget-dropdown", has_text="explain with").locator("select").select_option("occlusion")
    start = time.monotonic()
    console.get_by_role("button", name="Explain").click()
    page.wait_for_function(
        "([el, img, old]) => el.innerText.includes('occlusion: why') && img.getAttribute('src') !== old",
        arg=[status.element_handle(), image.element_handle(), shown],
        timeout=30_000,
    )
    timings["explain_shown_s"] = round(time.monotonic() - start, 2)
    expect(status).to_contain_text("red for, blue against")
    assert image.evaluate("img => img.naturalWidth") > 200  # the overlay was drawn, not a broken image
    lab.wait_idle(kernel, timeout=60)
    page.screenshot(path=str(ARTIFACTS / "08_console_explain.png"))
    assert_fits(page, console, "08_console_explain")
    assert_ran_cleanly(page)
    (ARTIFACTS / "08_timings.json").write_text(json.dumps(timings, indent=1))
    print("browser timings:", timings)


def small_copy(lab_root: Path, notebook: str, **parameters) -> str:
    """A copy of ``notebook`` in the lab with its parameters cell changed, as papermill would inject them."""
    source = lab_root / notebook
    nb = json.loads(source.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    lines = "".join(cell["source"]).splitlines()
    for name, value in parameters.items():
        lines = [f"{name} = {value!r}" if line.startswith(f"{name} = ") else line for line in lines]
    cell["source"] = "\n".join(lines)
    name = source.stem + "_small.ipynb"
    (lab_root / name).write_text(json.dumps(nb))
    return name


# Notebook 07 in the browser trains two epochs, not its twelve (tests/test_notebooks.py runs its defaults), into a
# folder of its own: notebook 10's copy below fine-tunes that model, or trains 07's recipe there when run alone.
BROWSER_GPT = "models/gpt-browser"


def test_chat_console_streams_an_answer_in_jupyterlab(page, lab):
    name = small_copy(lab.notebooks, "07_language_model_service.ipynb", epochs=2, concurrency=[1, 2],
                      model_path=BROWSER_GPT)  # fmt: skip
    kernel, timings, dashboard = run_and_find(page, lab, name, ".maaskit-lm-dashboard")
    expect(dashboard).to_contain_text("sample at step", timeout=30_000)
    expect(dashboard).to_contain_text("perplexity")
    expect(dashboard.locator("svg").first).to_be_attached()
    assert_fits(page, dashboard, "07_dashboard")
    # the EngineScope watched the server's engine: prompt chunks and decoded tokens, and the cache's use
    scope = page.locator(".maaskit-engine-scope").first
    scope.scroll_into_view_if_needed()
    expect(scope.locator(".maaskit-status")).to_contain_text("steps seen")
    expect(scope.locator("rect.maaskit-prefill").first).to_be_attached()
    expect(scope.locator("rect.maaskit-decode").first).to_be_attached()
    expect(scope.locator("polygon.maaskit-cache")).to_be_attached()
    assert_fits(page, scope, "07_engine_scope")
    console = page.locator(".maaskit-chat-console").first
    console.scroll_into_view_if_needed()
    history = console.locator(".maaskit-chat-history")
    page.wait_for_function(  # the notebook's own question was answered
        "el => el.innerText.includes('first token after')", arg=history.element_handle(), timeout=30_000
    )
    assert_fits(page, console, "07_chat")
    # record every state the conversation passes through while the next answer streams in
    history.evaluate(
        """el => { window.chatStates = [];
                   new MutationObserver(() => window.chatStates.push(el.innerText.length))
                     .observe(el, {subtree: true, childList: true, characterData: true}); }"""
    )
    console.locator(".maaskit-chat-prompt textarea").fill("What is a generator?")
    start = time.monotonic()
    console.get_by_role("button", name="Send").click()
    try:
        page.wait_for_function(
            # the answer's last line says how it finished; "first token after" shows from its first token on
            "el => el.innerText.split('finished:').length === 3",
            arg=history.element_handle(),
            timeout=30_000,
        )
    finally:
        print("status:", console.locator(".maaskit-status").inner_text(), "history:", history.inner_text()[-300:])
    timings["answer_shown_s"] = round(time.monotonic() - start, 2)
    assert "What is a generator?" in history.inner_text()
    states = page.evaluate("() => window.chatStates")
    assert len(set(states)) >= 3, states  # the answer grew piece by piece, not all at once
    lab.wait_idle(kernel, timeout=60)
    page.screenshot(path=str(ARTIFACTS / "07_chat.png"))
    assert_ran_cleanly(page)
    (ARTIFACTS / "07_timings.json").write_text(json.dumps(timings, indent=1))
    print("browser timings:", timings)


def test_chat_console_runs_a_tool_and_shows_the_final_answer_in_jupyterlab(page, lab, tmp_path):
    # notebook 10 with a short fine-tuning: enough for the model to call its tools (not to be right)
    name = small_copy(lab.notebooks, "10_assistant.ipynb", examples=3000, epochs=3, eval_n=12, experiment_examples=300,
                      experiment_n=6, pretrained_path=BROWSER_GPT)  # fmt: skip
    kernel, timings, console = run_and_find(page, lab, name, ".maaskit-chat-console")
    history = console.locator(".maaskit-chat-history")
    calls = history.locator(".maaskit-tool-call")
    expect(calls.first).to_be_attached(timeout=30_000)  # the notebook's own question: a tool was called
    assert_fits(page, console, "10_chat_tools")
    before = calls.count()
    finished = history.inner_text().count("finished:")
    console.locator(".maaskit-chat-prompt textarea").fill("What is 12 times 34?")
    console.get_by_role("button", name="Send").click()
    page.wait_for_function(
        "([el, n, f]) => el.querySelectorAll('.maaskit-tool-call').length > n && "
        "el.innerText.split('finished:').length > f + 1",  # the final answer has ended, not only begun
        arg=[history.element_handle(), before, finished], timeout=60_000,
    )  # fmt: skip
    text = history.inner_text()
    last = text[text.rindex("What is 12 times 34?") :]
    # the call with its result, then the model's final answer under it
    assert re.search(r"called (calculate|convert)\(.*\) → ", last), last
    assert re.search(r"assistant:\s*\S", last[last.index("→") :]), last
    lab.wait_idle(kernel, timeout=60)
    page.screenshot(path=str(ARTIFACTS / "10_chat_tools.png"))
    assert_ran_cleanly(page)
    print("browser timings:", timings)
