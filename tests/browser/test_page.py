"""The chat page at /ui in headless Chromium, against `rill serve --model smollm2` through a cutting proxy:
it loads clean, streams an answer with live TTFT and tok/s, keeps the conversation, shows model output as
text, stops a generation on the server, and survives a connection cut mid-answer without losing or repeating
a token."""

import json
import re
import subprocess

import httpx
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.keys import Keys

from conftest import MODEL, ROOT, TIMEOUT, by_css, metric, poll, requested_urls, wait

STORY = "Tell me a long story about a dragon who learns to bake bread."
HTML = "Write a minimal HTML page with a script tag that shows an alert."


def open_page(driver, proxy):
    driver.get(proxy.url + "/ui")
    wait(driver, lambda d: d.find_element("id", "model-name").text == MODEL, msg="model name")
    wait(driver, lambda d: d.find_element("id", "send").is_enabled(), msg="send enabled")


def settings(driver, temperature, max_tokens):
    """Sets the controls as a person would: clear and type."""
    driver.find_element("css selector", "#settings summary").click()
    for id_, v in (("temperature", temperature), ("max-tokens", max_tokens)):
        box = driver.find_element("id", id_)
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(v))
    driver.find_element("css selector", "#settings summary").click()


def send(driver, text):
    box = driver.find_element("id", "prompt")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def answers(driver):
    return by_css(driver, "#messages .msg.assistant .answer")


def wait_finished(driver, n):
    """Waits for the n-th answer (from 1) to leave the streaming state; returns that element."""
    wait(driver, lambda d: len(answers(d)) >= n, msg=f"answer {n} appears")
    wait(driver, lambda d: answers(d)[n - 1].get_attribute("data-state") != "streaming", msg=f"answer {n} ends")
    return answers(driver)[n - 1]


def stream_posts(proxy):
    return [json.loads(b) for m, p, _, b in proxy.requests if m == "POST" and p == "/v1/streams"]


def reference(base, messages, max_tokens):
    """The same request answered without streaming, at temperature 0: what the page must end up showing."""
    r = httpx.post(f"{base}/v1/chat/completions", timeout=TIMEOUT,
                   json={"messages": messages, "temperature": 0, "max_tokens": max_tokens})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


def test_the_page_loads_clean(driver, proxy):
    driver.get_log("performance")
    driver.get_log("browser")
    open_page(driver, proxy)
    assert driver.find_element("id", "model-ctx").text.endswith("ctx")
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    urls = requested_urls(driver)
    assert urls, "the performance log saw the page's requests"
    outside = [u for u in urls if not (u.startswith(proxy.url + "/") or u.startswith("data:"))]
    assert outside == [], outside


def test_an_answer_streams_in_with_live_ttft_and_speed(driver, proxy, out):
    open_page(driver, proxy)
    settings(driver, 0, 96)
    # Record the answer's length at every change the browser renders.
    driver.execute_script("""
        window.__lens = [];
        new MutationObserver(() => {
          const a = document.querySelectorAll('#messages .msg.assistant .answer');
          if (a.length) window.__lens.push(a[a.length - 1].textContent.length);
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
    """)
    send(driver, "Describe the city of Paris in three sentences.")
    # Live figures appear while it is still streaming or right at the end.
    answer = wait_finished(driver, 1)
    assert answer.get_attribute("data-state") == "done", answer.get_attribute("data-state")
    lens = [n for n in driver.execute_script("return window.__lens") if n > 0]
    assert len(set(lens)) >= 3, f"the answer changed only {len(set(lens))} times before the end: {lens}"
    assert answer.text.strip()
    stats = by_css(driver, "#messages .msg.assistant .stats")[0]
    assert re.search(r"TTFT \d+ ms", stats.find_element("css selector", ".ttft").text), stats.text
    assert re.search(r"\d+(\.\d)? tok/s", stats.find_element("css selector", ".tps").text), stats.text
    assert re.search(r"\d+ tokens", stats.find_element("css selector", ".tokens").text), stats.text
    driver.save_screenshot(str(out / "answer.png"))


def test_a_second_turn_includes_the_first(driver, proxy, base):
    open_page(driver, proxy)
    settings(driver, 0, 48)
    first = "Name three colors of the rainbow."
    send(driver, first)
    wait_finished(driver, 1)
    send(driver, "Now name two more.")
    second = wait_finished(driver, 2)
    assert second.get_attribute("data-state") == "done"
    messages = stream_posts(proxy)[-1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"], messages
    assert messages[0]["content"] == first
    # The first answer went back word for word: the same request without streaming gives the same text.
    assert messages[1]["content"] == reference(base, [{"role": "user", "content": first}], 48)
    assert messages[2]["content"] == "Now name two more."


def test_model_output_is_shown_as_text(driver, proxy, out):
    open_page(driver, proxy)
    settings(driver, 0, 120)
    send(driver, HTML)
    answer = wait_finished(driver, 1)
    assert "<script>" in answer.text, answer.text
    assert by_css(driver, "#messages script") == []
    try:
        driver.switch_to.alert
        raise AssertionError("the model's script ran")
    except NoAlertPresentException:
        pass
    driver.save_screenshot(str(out / "script-as-text.png"))


def test_stop_cancels_on_the_server(driver, proxy, base):
    open_page(driver, proxy)
    settings(driver, 0.7, 2000)
    before = metric(base, "rill_cancelled_requests_total")
    send(driver, STORY)
    wait(driver, lambda d: len(answers(d)) == 1 and answers(d)[0].text.strip() != "", msg="first text")
    driver.find_element("id", "stop").click()
    answer = wait_finished(driver, 1)
    assert answer.get_attribute("data-state") == "cancelled"
    assert poll(lambda: metric(base, "rill_cancelled_requests_total") == before + 1), "the server counted no cancel"
    assert poll(lambda: metric(base, "rill_running_sequences") == 0)
    assert driver.find_element("id", "send").is_enabled()


def test_a_cut_connection_resumes_without_losing_or_repeating_a_token(driver, proxy, base, out):
    prompt, n = "Explain in a few sentences why the sky is blue.", 120
    open_page(driver, proxy)
    settings(driver, 0, n)
    send(driver, prompt)
    whole = wait_finished(driver, 1).text
    # The same answer again, in a new chat, with its event stream cut mid-answer.
    driver.find_element("css selector", "#settings summary").click()
    driver.find_element("id", "new-chat").click()
    driver.find_element("css selector", "#settings summary").click()
    cuts = proxy.cuts
    proxy.cut_after(1200)
    send(driver, prompt)
    answer = wait_finished(driver, 1)
    assert proxy.cuts == cuts + 1, "the proxy cut the stream"
    assert answer.get_attribute("data-state") == "done", answer.text
    assert answer.text == whole
    resumed = [h for m, p, h, _ in proxy.requests if m == "GET" and "/events" in p and "last-event-id" in h]
    assert resumed and int(resumed[-1]["last-event-id"]) > 0, "the browser reconnected with Last-Event-ID"
    assert reference(base, [{"role": "user", "content": prompt}], n).strip() != ""
    driver.save_screenshot(str(out / "resumed.png"))


def test_the_page_fits_a_phone(driver, proxy, out):
    driver.set_window_size(375, 740)
    try:
        open_page(driver, proxy)
        settings(driver, 0, 120)
        send(driver, HTML)
        wait_finished(driver, 1)
        # Nothing but code blocks scrolls sideways, and the composer stays on screen.
        overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than the screen"
        box = driver.find_element("id", "prompt").rect
        assert box["y"] + box["height"] <= 740 and box["width"] > 200, box
        driver.save_screenshot(str(out / "phone.png"))
    finally:
        driver.set_window_size(1100, 900)


def test_the_page_asks_for_the_api_key(driver, out):
    """A server with --api-key (started here, ended by PID): the page still loads, asks for the key when the
    first send is refused, then sends it and streams the answer."""
    log = out / "api-key-server.log"
    with open(log, "w") as sink:
        server = subprocess.Popen(
            [str(ROOT / "target/release/rill"), "serve", "--model", "smollm2", "--host", "127.0.0.1", "--port", "0",
             "--api-key", "page-test-key"],
            cwd=ROOT, stderr=sink, stdout=subprocess.DEVNULL)
    try:
        found = []
        assert poll(lambda: found.extend(re.findall(r"rill listening on (http://\S+)", log.read_text())) or found,
                    timeout=60), log.read_text()
        url = found[0]
        assert poll(lambda: httpx.get(url + "/health", timeout=5).status_code == 200, timeout=60)
        driver.get(url + "/ui")
        wait(driver, lambda d: d.find_element("id", "send").is_enabled(), msg="send enabled")
        driver.execute_script("sessionStorage.clear()")
        settings(driver, 0, 16)
        send(driver, "Say hello.")
        wait(driver, lambda d: d.find_element("id", "key-form").is_displayed(), msg="the key form")
        driver.find_element("id", "api-key").send_keys("page-test-key")
        driver.find_element("id", "save-key").click()
        answer = wait_finished(driver, 1)
        assert answer.get_attribute("data-state") == "done" and answer.text.strip()
        assert "page-test-key" not in " ".join(requested_urls(driver)), "the key never goes into a URL"
        driver.save_screenshot(str(out / "api-key.png"))
    finally:
        server.kill()
        server.wait(timeout=10)
