"""`render monitor`'s page in a real browser (issue 19): Debian's headless chromium,
driven through its own chromedriver by Selenium (both from apt; nothing is downloaded
at test time). A real worker renders a job with one poisoned frame; the page shows the
progress move, the thumbnails of the latest frames, the failed task and its log, drains
the worker, and requeues the failed task with the token, after which its cell shows it
pending again. Screenshots are saved in the
test's tmp folder (and, with FRAMEFARM_MONITOR_SCREENSHOT=PATH, the mid-render one there
too: that is how benchmarks/results/monitor.png, shown in the README, was made)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from helpers import render, running_monitor, write_latents

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "browser-test-token"
FRAMES = 1500   # ~30 frames/s on one CPU core here: the worker is still busy when drained
POISON = 3

def wait_for(driver, condition: Callable[[], object], what: str, timeout: float = 60) -> object:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda _d: condition(), message=what)


def answer_prompt(driver, text: str) -> None:
    from selenium.webdriver.support import expected_conditions

    wait_for(driver, lambda: expected_conditions.alert_is_present()(driver), "the page asks for the token", 10)
    prompt = driver.switch_to.alert
    prompt.send_keys(text)
    prompt.accept()


def done_count(driver) -> int:
    from selenium.webdriver.common.by import By

    text = driver.find_element(By.CSS_SELECTOR, "#job-head [data-field=done]").text
    return int(text) if text else 0


def task_shown(driver, first: int) -> dict | None:
    """What the page shows of the task starting at frame `first`: its strip cell's state
    and its row's error."""
    return driver.execute_script(
        "for (const row of document.querySelectorAll('#tasks tbody tr')) {"
        "  if (row.querySelector('[data-field=first]').textContent === String(arguments[0])) {"
        "    const cell = document.querySelector('#strip [data-key=\"' + row.dataset.key + '\"]');"
        "    return {cell: cell.className.replace('cell state-', ''),"
        "            error: row.querySelector('[data-field=error]').textContent}; } }"
        "return null;", first)


def cell_state(driver, first: int) -> str | None:
    shown = task_shown(driver, first)
    return shown["cell"] if shown else None


def test_the_page_follows_a_render_drains_the_worker_and_requeues_a_failed_task(
        browser, tmp_path: Path, write_job: Callable[..., Path], job_dir: Path) -> None:
    from selenium.webdriver.common.by import By

    write_latents(job_dir / "npy", range(1, FRAMES + 1), (4, 12, 16), suffix=".npy")
    poison = job_dir / "npy" / f"frame_{POISON:04d}.npy"
    poison.write_bytes(poison.read_bytes()[:-64])
    job = write_job("farm.toml", source={"path": "npy/frame_{frame:04d}.npy"},
                    shot={"name": "sq010_sh0420", "frame_end": FRAMES}, output={"formats": ["png"]})
    queue_url = f"sqlite:///{tmp_path / 'farm.db'}"
    submitted = render("submit", str(job), "--queue", queue_url, "--chunk", "1", "--max-attempts", "1")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()

    with running_monitor(queue_url, token=TOKEN) as base:
        worker = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "worker", "--queue", queue_url, "--device", "cpu", "--slots", "1",
             "--output-root", str(job_dir), "--model-root", str(job_dir.parent), "--name", "render-node-01/gpu0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            browser.get(f"{base}/jobs/{job_id}")
            wait_for(browser, lambda: cell_state(browser, POISON) == "failed", "the poisoned frame's task fails")
            first_seen = done_count(browser)
            wait_for(browser, lambda: done_count(browser) > first_seen + 2, "the page shows the progress move")
            assert browser.find_element(By.CSS_SELECTOR, "#job-head [data-field=fps]").text not in ("", "–")
            wait_for(browser, lambda: browser.execute_script(   # the worker's thumbnails (32x24 frames)
                "return [...document.querySelectorAll('#thumbs img')].filter("
                "  (img) => img.complete && img.naturalWidth === 32).length") >= 4,
                "the thumbnails of the latest frames are shown", 20)
            assert f"stage 'source' on frame {POISON} failed" in task_shown(browser, POISON)["error"]
            browser.execute_script(   # the failed task's row: its log shows below the table
                "for (const row of document.querySelectorAll('#tasks tbody tr'))"
                "  if (row.querySelector('[data-field=first]').textContent === String(arguments[0])) row.click();",
                POISON)
            wait_for(browser, lambda: f"stage 'source' on frame {POISON} failed" in browser.find_element(
                By.ID, "task-log").text, "the failed task's log is shown", 10)
            assert "--- attempt 1 on worker render-node-01/gpu0" in browser.find_element(By.ID, "task-log").text
            browser.save_screenshot(str(tmp_path / "monitor-job.png"))
            if os.environ.get("FRAMEFARM_MONITOR_SCREENSHOT"):
                shutil.copyfile(tmp_path / "monitor-job.png", os.environ["FRAMEFARM_MONITOR_SCREENSHOT"])

            # The jobs page lists the job and the worker; its drain button asks for the token.
            browser.get(base + "/")
            drain = wait_for(browser, lambda: browser.find_elements(
                By.CSS_SELECTOR, "#workers tr[data-key='render-node-01/gpu0'] button[data-action=drain]"),
                "the worker is listed")
            assert browser.find_element(By.CSS_SELECTOR, f"#jobs tr[data-key='{job_id}'] [data-field=name]"
                                        ).text == "sq010_sh0420"
            drain[0].click()
            answer_prompt(browser, TOKEN)
            _out, err = worker.communicate(timeout=60)
            assert worker.returncode == 0, err
            assert "asked to drain by the queue" in err
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()

        # Requeue on the job page: a new tab's session has no token yet, so it asks for it.
        browser.get(f"{base}/jobs/{job_id}")
        browser.execute_script("sessionStorage.clear()")
        wait_for(browser, lambda: cell_state(browser, POISON) == "failed", "the failed task is shown")
        stopped_at = done_count(browser)
        assert 0 < stopped_at < FRAMES - 1
        assert task_shown(browser, FRAMES)["cell"] == "pending"   # drained before the end
        browser.find_element(By.ID, "requeue").click()
        answer_prompt(browser, TOKEN)
        wait_for(browser, lambda: cell_state(browser, POISON) == "pending", "the requeued task shows pending", 10)
        assert "requeue: done" in browser.find_element(By.ID, "status").text
        assert done_count(browser) == stopped_at   # nothing else changed
        assert task_shown(browser, POISON)["error"] == ""
        browser.save_screenshot(str(tmp_path / "monitor-requeued.png"))
        assert (tmp_path / "monitor-job.png").stat().st_size > 10_000
