"""Resumable streams from a plain Python SSE client: a cut connection resumes with Last-Event-ID and the text
equals the uninterrupted temperature-0 answer; a client that never comes back frees its slot after the window
(the server runs with --resume-window-secs 3)."""

import json
import time

import httpx

from conftest import TIMEOUT, metric, poll


def start(url, messages, max_tokens, **extra):
    r = httpx.post(f"{url}/v1/streams", timeout=TIMEOUT,
                   json={"messages": messages, "temperature": 0, "max_tokens": max_tokens, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def read_events(client, url, last_id, limit_events=None):
    """Reads one connection's events after `last_id`; stops after `limit_events` deltas (then drops it).
    Returns [(id, event, data)] of complete events, and whether the connection ended by itself."""
    headers = {"Last-Event-ID": str(last_id)} if last_id else {}
    events, deltas = [], 0
    with client.stream("GET", url, headers=headers, timeout=TIMEOUT) as r:
        if r.status_code == 204:
            return events, True
        assert r.status_code == 200, r.status_code
        block = {}
        try:
            for line in r.iter_lines():
                if line == "":
                    if "data" in block:
                        events.append((int(block["id"]), block["event"], json.loads(block["data"])))
                        deltas += block["event"] == "delta"
                        if limit_events is not None and deltas >= limit_events:
                            return events, False
                    block = {}
                elif not line.startswith(":"):
                    k, _, v = line.partition(": ")
                    block[k] = v
        except httpx.RemoteProtocolError:
            return events, False  # the proxy cut it
    return events, True


def test_a_cut_stream_resumes_exactly(base, proxy):
    messages = [{"role": "user", "content": "Describe a rainy afternoon in a small town."}]
    n = 120
    expected = httpx.post(f"{base}/v1/chat/completions", timeout=TIMEOUT,
                          json={"messages": messages, "temperature": 0, "max_tokens": n}).json()
    expected = expected["choices"][0]["message"]["content"]
    s = start(proxy.url, messages, n)
    url = proxy.url + s["events_url"]
    text, ids, last, cuts = "", [], 0, proxy.cuts
    with httpx.Client() as client:
        for attempt in range(20):
            if attempt == 0:
                proxy.cut_after(900)
            events, ended = read_events(client, url, last)
            for id_, ev, data in events:
                ids.append(id_)
                if ev == "delta":
                    text += data["text"]
                last = id_
            if ended and events and events[-1][1] == "done":
                break
            time.sleep(0.05)
    assert proxy.cuts == cuts + 1, "the proxy cut the stream"
    assert ids == list(range(1, len(ids) + 1)), "every event exactly once, in order"
    assert text == expected


def test_a_client_that_never_comes_back_frees_its_slot(base):
    before = metric(base, "rill_cancelled_requests_total")
    s = start(base, [{"role": "user", "content": "Count from one to one thousand."}], 4000, ignore_eos=True)
    with httpx.Client() as client:
        events, ended = read_events(client, base + s["events_url"], 0, limit_events=2)
    assert not ended and len(events) >= 2
    left = time.monotonic()
    # Within the 3 s window the generation goes on; after it, it is cancelled and freed.
    assert poll(lambda: metric(base, "rill_cancelled_requests_total") == before + 1, timeout=30)
    assert time.monotonic() - left >= 2.5
    assert poll(lambda: metric(base, "rill_running_sequences") == 0, timeout=10)
    # Its events are kept one more window for a late reader, then forgotten (reading it would restart that clock).
    assert poll(lambda: metric(base, "rill_browser_streams") == 0, timeout=15)
    assert httpx.get(base + s["events_url"], timeout=10).status_code == 404
