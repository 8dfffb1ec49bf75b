// rill chat page: health polling, POST /v1/streams + EventSource streaming, stop/resume handling, and a small
// Markdown renderer that builds DOM nodes only (never HTML strings). No dependencies, no globals.
(function () {
  'use strict';

  const $ = (id) => document.getElementById(id);
  const ui = {
    messages: $('messages'), prompt: $('prompt'), send: $('send'), stop: $('stop'), composer: $('composer'),
    error: $('error'), system: $('system'), temperature: $('temperature'), maxTokens: $('max-tokens'),
    newChat: $('new-chat'), setKey: $('set-key'), modelName: $('model-name'), modelCtx: $('model-ctx'),
    serverStatus: $('server-status'), keyForm: $('key-form'), keyInput: $('api-key'), keyMsg: $('key-msg'),
    keyCancel: $('key-cancel'),
  };

  const KEY_STORE = 'rill.apiKey';
  const turns = [];          // {role: 'user'|'assistant', text}
  let active = null;         // the generation in progress (see startStream)
  let sending = false;       // POST /v1/streams in flight
  let ready = false;         // /health said ok
  let polling = false;
  let retryUntil = 0, retryTimer = 0;
  let pendingText = null;    // prompt to resend once an API key is saved
  let stick = true;          // auto-scroll while the user is at the bottom

  function getKey() { try { return sessionStorage.getItem(KEY_STORE) || ''; } catch (_) { return ''; } }
  function setKey(k) {
    try { if (k) sessionStorage.setItem(KEY_STORE, k); else sessionStorage.removeItem(KEY_STORE); } catch (_) { /* private mode */ }
  }
  function authHeaders(extra) {
    const h = Object.assign({}, extra);
    const k = getKey();
    if (k) h.Authorization = 'Bearer ' + k;
    return h;
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }

  // ---------------------------------------------------------------- Markdown (DOM only)

  const MAX_DEPTH = 12;
  const RE_FENCE = /^( {0,3})(`{3,}|~{3,})(.*)$/;
  const RE_HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
  const RE_HR = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
  const RE_QUOTE = /^ {0,3}> ?/;
  const RE_LIST = /^( {0,3})([-*+]|\d{1,9}[.)])(?:([ \t]+)(.*))?$/;
  const RE_PUNCT = /[!-\/:-@[-`{-~]/;
  const RE_ALNUM = /[\p{L}\p{N}]/u;

  const isBlank = (l) => /^\s*$/.test(l);
  const indentOf = (l) => l.length - l.replace(/^ +/, '').length;

  function fenceOpen(l) {
    const m = RE_FENCE.exec(l);
    if (!m || (m[2][0] === '`' && m[3].includes('`'))) return null;
    return { indent: m[1].length, fence: m[2], info: m[3].trim() };
  }
  function listMatch(l) {
    const m = RE_LIST.exec(l);
    if (!m) return null;
    const sp = m[3] ? m[3].length : 1;
    const ordered = /\d/.test(m[2]);
    return {
      indent: m[1].length, ordered, num: ordered ? parseInt(m[2], 10) : 0, content: m[4] || '',
      contentIndent: m[1].length + m[2].length + (sp > 4 ? 1 : sp),
    };
  }
  const isBlockStart = (l) => !!(fenceOpen(l) || RE_HEADING.test(l) || RE_HR.test(l) || RE_QUOTE.test(l) || listMatch(l));

  function renderMarkdown(src, container) {
    const lines = src.replace(/\r\n?/g, '\n').split('\n')
      .map((l) => l.replace(/^\t+/, (t) => '    '.repeat(t.length)));
    const frag = document.createDocumentFragment();
    parseBlocks(lines, frag, 0);
    container.replaceChildren(frag);
  }

  function parseBlocks(lines, parent, depth) {
    if (depth > MAX_DEPTH) { parent.appendChild(el('p', null, lines.join('\n'))); return; }
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (isBlank(line)) { i++; continue; }
      let m;
      const f = fenceOpen(line);
      if (f) {                                   // fenced code; an unclosed fence runs to the end (streaming)
        const body = [];
        for (i++; i < lines.length; i++) {
          const c = /^ {0,3}(`{3,}|~{3,})[ \t]*$/.exec(lines[i]);
          if (c && c[1][0] === f.fence[0] && c[1].length >= f.fence.length) { i++; break; }
          body.push(lines[i].slice(Math.min(f.indent, indentOf(lines[i]))));
        }
        const pre = el('pre'), code = el('code', null, body.join('\n'));
        const lang = (f.info.split(/\s+/)[0] || '').toLowerCase();
        if (/^[a-z0-9+-]+$/.test(lang)) { code.className = 'language-' + lang; pre.dataset.lang = lang; }
        pre.appendChild(code);
        parent.appendChild(pre);
        continue;
      }
      if ((m = RE_HEADING.exec(line))) {
        const h = el('h' + m[1].length);
        renderInline(m[2] || '', h, 0);
        parent.appendChild(h);
        i++;
        continue;
      }
      if (RE_HR.test(line)) { parent.appendChild(el('hr')); i++; continue; }
      if (RE_QUOTE.test(line)) {
        const body = [];
        while (i < lines.length && !isBlank(lines[i]) && (RE_QUOTE.test(lines[i]) || !isBlockStart(lines[i]))) {
          body.push(lines[i].replace(RE_QUOTE, ''));
          i++;
        }
        const q = el('blockquote');
        parseBlocks(body, q, depth + 1);
        parent.appendChild(q);
        continue;
      }
      if (listMatch(line)) { i = parseList(lines, i, parent, depth); continue; }
      const para = [];                           // paragraph: runs to a blank line or the next block
      while (i < lines.length && !isBlank(lines[i]) && (para.length === 0 || !isBlockStart(lines[i]))) {
        para.push(lines[i].trim());
        i++;
      }
      const p = el('p');
      renderInline(para.join('\n'), p, 0);
      parent.appendChild(p);
    }
  }

  function parseList(lines, i, parent, depth) {
    const first = listMatch(lines[i]);
    const list = el(first.ordered ? 'ol' : 'ul');
    if (first.ordered && first.num !== 1) list.start = first.num;
    while (i < lines.length) {
      const m = listMatch(lines[i]);
      if (!m || m.ordered !== first.ordered) break;
      const body = [m.content];
      let lastBlank = false;
      for (i++; i < lines.length; i++) {
        const l = lines[i];
        if (isBlank(l)) {
          let j = i + 1;
          while (j < lines.length && isBlank(lines[j])) j++;
          if (j < lines.length && indentOf(lines[j]) > m.indent) {
            for (; i < j; i++) body.push('');
            i--;
            lastBlank = true;
            continue;
          }
          break;
        }
        const ind = indentOf(l);
        if (ind > m.indent) { body.push(l.slice(Math.min(ind, m.contentIndent))); lastBlank = false; continue; }
        if (lastBlank || isBlockStart(l)) break;
        body.push(l);                            // lazy continuation of the item's paragraph
      }
      const li = el('li');
      parseBlocks(body, li, depth + 1);
      list.appendChild(li);
      let j = i;
      while (j < lines.length && isBlank(lines[j])) j++;
      const n = j < lines.length ? listMatch(lines[j]) : null;
      if (!n || n.ordered !== first.ordered) break;
      i = j;
    }
    parent.appendChild(list);
    return i;
  }

  // Finds the closing run of exactly `len` `ch` characters after `from`, honouring flanking rules.
  function findCloser(s, from, ch, len) {
    let j = from;
    while (j < s.length) {
      if (s[j] !== ch) { j++; continue; }
      let r = 1;
      while (s[j + r] === ch) r++;
      if (r === len && (ch === '`' || !/\s/.test(s[j - 1])) && !(ch === '_' && RE_ALNUM.test(s[j + r] || ''))) return j;
      j += r;
    }
    return -1;
  }

  function matchLink(s, i) {
    let depth = 0, k = i;
    for (; k < s.length; k++) {
      if (s[k] === '\\') { k++; continue; }
      if (s[k] === '[') depth++;
      else if (s[k] === ']' && --depth === 0) break;
    }
    if (k >= s.length || s[k + 1] !== '(') return null;
    let close = k + 2;
    for (let d = 0; close < s.length && s[close] !== '\n'; close++) {   // balanced parens: wiki-style URLs
      if (s[close] === '(') d++;
      else if (s[close] === ')' && d-- === 0) break;
    }
    if (close >= s.length || s[close] !== ')') return null;
    const m = /^\s*<?([^\s<>]+?)>?(?:\s+"[^"]*")?\s*$/.exec(s.slice(k + 2, close));
    if (!m) return null;
    return { text: s.slice(i + 1, k), url: m[1], end: close + 1 };
  }

  function safeUrl(u) {
    if (!/^https?:\/\//i.test(u)) return null;
    try { const url = new URL(u); return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null; } catch (_) { return null; }
  }

  function renderInline(s, parent, depth) {
    if (depth > MAX_DEPTH) { parent.appendChild(document.createTextNode(s)); return; }
    let buf = '';
    const miss = Object.create(null);            // delimiters known to have no closer further on
    const flush = () => { if (buf) { parent.appendChild(document.createTextNode(buf)); buf = ''; } };
    let i = 0;
    while (i < s.length) {
      const c = s[i];
      if (c === '\\' && i + 1 < s.length && RE_PUNCT.test(s[i + 1])) { buf += s[i + 1]; i += 2; continue; }
      if (c === '\n') { flush(); parent.appendChild(el('br')); i++; continue; }
      if (c === '`') {
        let n = 1;
        while (s[i + n] === '`') n++;
        const j = miss['`' + n] ? -1 : findCloser(s, i + n, '`', n);
        if (j === -1) { miss['`' + n] = true; buf += s.slice(i, i + n); i += n; continue; }
        let code = s.slice(i + n, j).replace(/\n/g, ' ');
        if (code.length > 2 && code[0] === ' ' && code[code.length - 1] === ' ' && code.trim()) code = code.slice(1, -1);
        flush();
        parent.appendChild(el('code', null, code));
        i = j + n;
        continue;
      }
      if (c === '[' && !miss['[']) {
        const m = matchLink(s, i);
        if (m) {
          const href = safeUrl(m.url);
          if (href) {
            flush();
            const a = el('a');
            a.href = href;
            a.rel = 'noopener noreferrer';
            a.target = '_blank';
            renderInline(m.text, a, depth + 1);
            parent.appendChild(a);
          } else {
            buf += s.slice(i, m.end);            // not http(s): show the raw source
          }
          i = m.end;
          continue;
        }
        if (s.indexOf('](', i) === -1) miss['['] = true;
      }
      if (c === '*' || c === '_') {
        let n = 1;
        while (s[i + n] === c) n++;
        const next = s[i + n] || '';
        const opens = n <= 3 && next && !/\s/.test(next) && !(c === '_' && RE_ALNUM.test(s[i - 1] || ''));
        let done = false;
        for (let len = opens ? n : 0; len >= 1 && !done; len--) {
          const key = c + len;
          const j = miss[key] ? -1 : findCloser(s, i + n, c, len);
          if (j === -1 || j === i + n) { if (j === -1) miss[key] = true; continue; }
          buf += c.repeat(n - len);
          flush();
          const inner = s.slice(i + n, j);
          let node;
          if (len === 3) { node = el('strong'); const em = el('em'); renderInline(inner, em, depth + 1); node.appendChild(em); }
          else { node = el(len === 2 ? 'strong' : 'em'); renderInline(inner, node, depth + 1); }
          parent.appendChild(node);
          i = j + len;
          done = true;
        }
        if (!done) { buf += s.slice(i, i + n); i += n; }
        continue;
      }
      buf += c;
      i++;
    }
    flush();
  }

  // ---------------------------------------------------------------- page state & helpers

  function showError(msg) {
    ui.error.textContent = msg || '';
    ui.error.hidden = !msg;
  }

  function updateControls() {
    const waiting = retryUntil > Date.now();
    ui.send.disabled = !!active || sending || !ready || waiting;
    ui.stop.hidden = !active;
    ui.stop.disabled = !active || active.stopping;
  }

  function atBottom() {
    const m = ui.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 48;
  }
  function scrollDown() { if (stick) ui.messages.scrollTop = ui.messages.scrollHeight; }

  function startCountdown(secs, label) {
    retryUntil = Date.now() + secs * 1000;
    clearInterval(retryTimer);
    const tick = () => {
      const left = Math.ceil((retryUntil - Date.now()) / 1000);
      if (left <= 0) {
        clearInterval(retryTimer);
        retryTimer = 0;
        retryUntil = 0;
        showError('');
      } else {
        showError(label + ' — retry in ' + left + ' s');
      }
      updateControls();
    };
    tick();
    retryTimer = setInterval(tick, 250);
  }

  function retryAfter(res) {
    const v = res.headers.get('Retry-After');
    if (!v) return 0;
    if (/^\d+$/.test(v.trim())) return parseInt(v, 10);
    const t = Date.parse(v);
    return isNaN(t) ? 0 : Math.max(0, Math.ceil((t - Date.now()) / 1000));
  }

  async function pollHealth() {
    if (polling) return;
    polling = true;
    ready = false;
    updateControls();
    for (;;) {
      try {
        const res = await fetch('/health', { cache: 'no-store' });
        const j = await res.json().catch(() => ({}));
        if (res.ok && j.status !== 'loading') {
          ready = true;
          if (j.model) { ui.modelName.textContent = j.model; document.title = 'rill · ' + j.model; }
          ui.modelCtx.textContent = Number.isFinite(j.context_length) ? j.context_length + ' ctx' : '';
          ui.serverStatus.textContent = '';
          break;
        }
        ui.serverStatus.textContent = res.status === 503 ? 'loading model…' : 'server error (' + res.status + ')';
      } catch (_) {
        ui.serverStatus.textContent = 'cannot reach the server';
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
    polling = false;
    updateControls();
  }

  // ---------------------------------------------------------------- conversation DOM

  function addUser(text) {
    const wrap = el('div', 'msg user');
    wrap.appendChild(el('div', 'role', 'You'));
    wrap.appendChild(el('div', 'body', text));
    ui.messages.appendChild(wrap);
    return wrap;
  }

  function addAssistant() {
    const wrap = el('div', 'msg assistant');
    wrap.appendChild(el('div', 'role', ui.modelName.textContent || 'rill'));
    const answer = el('div', 'answer');
    answer.dataset.state = 'streaming';
    const stats = el('div', 'stats');
    const s = { ttft: el('span', 'ttft'), tps: el('span', 'tps'), tokens: el('span', 'tokens'), status: el('span', 'status') };
    stats.append(s.ttft, s.tps, s.tokens, s.status);
    wrap.append(answer, stats);
    ui.messages.appendChild(wrap);
    return { wrap, answer, s };
  }

  function conversation(newText) {
    const msgs = [];
    const sys = ui.system.value.trim();
    if (sys) msgs.push({ role: 'system', content: sys });
    for (const t of turns) if (t.role === 'user' || t.text) msgs.push({ role: t.role, content: t.text });
    msgs.push({ role: 'user', content: newText });
    return msgs;
  }

  function numberOr(input, def, min, max, int) {
    const v = int ? parseInt(input.value, 10) : parseFloat(input.value);
    return Number.isFinite(v) ? Math.min(max, Math.max(min, v)) : def;
  }

  // ---------------------------------------------------------------- sending

  async function send() {
    const text = ui.prompt.value.trim();
    if (!text || active || sending || !ready || retryUntil > Date.now()) return;
    const t0 = performance.now();
    sending = true;
    showError('');
    hideKeyForm();
    updateControls();
    const body = {
      messages: conversation(text),
      temperature: numberOr(ui.temperature, 0.7, 0, 2, false),
      max_tokens: numberOr(ui.maxTokens, 512, 1, 1e9, true),
    };
    const saved = ui.prompt.value;
    ui.prompt.value = '';
    autosize();
    stick = true;
    const userEl = addUser(text);
    const view = addAssistant();
    scrollDown();

    const fail = (msg) => {
      userEl.remove();
      view.wrap.remove();
      if (!ui.prompt.value) { ui.prompt.value = saved; autosize(); }
      if (msg) showError(msg);
    };

    let res, data;
    try {
      res = await fetch('/v1/streams', {
        method: 'POST', headers: authHeaders({ 'Content-Type': 'application/json' }), body: JSON.stringify(body),
      });
      data = await res.json().catch(() => ({}));
    } catch (_) {
      sending = false;
      fail('cannot reach the server');
      updateControls();
      return;
    }
    sending = false;
    if (res.ok && data.events_url) {
      turns.push({ role: 'user', text });
      const turn = { role: 'assistant', text: '' };
      turns.push(turn);
      startStream(data, turn, view, t0);
      return;
    }
    const msg = (data && data.error && data.error.message) || res.statusText || 'request failed';
    if (res.status === 401) {
      fail('');
      pendingText = text;
      showKeyForm(getKey() ? 'The API key was rejected: ' + msg : 'This server needs an API key.');
    } else if (res.status === 429) {
      fail('');
      startCountdown(retryAfter(res) || 1, 'server busy');
    } else if (res.status === 503) {
      fail('');
      const secs = retryAfter(res);
      if (secs) startCountdown(secs, 'server unavailable: ' + msg);
      else showError('server unavailable: ' + msg);
      pollHealth();
    } else {
      fail('error ' + res.status + ': ' + msg);
    }
    updateControls();
  }

  // ---------------------------------------------------------------- streaming

  function startStream(info, turn, view, t0) {
    const gen = {
      turn, view, t0, es: new EventSource(info.events_url), cancelUrl: info.cancel_url,
      finished: false, stopping: false, raf: 0,
      ttft: null, firstAt: 0, firstTokens: 0, tokens: 0,
      resumeMs: ((info.resume_window_secs || 30) + 5) * 1000, lostTimer: 0, stopTimer: 0,
    };
    active = gen;
    updateControls();
    const es = gen.es;
    const status = (t) => { view.s.status.textContent = t || ''; };
    const clearReconnect = () => {
      if (gen.lostTimer) { clearTimeout(gen.lostTimer); gen.lostTimer = 0; }
      if (!gen.stopping && view.s.status.textContent === 'reconnecting…') status('');
    };
    const parse = (e) => { try { return JSON.parse(e.data); } catch (_) { return {}; } };

    es.addEventListener('open', clearReconnect);
    es.addEventListener('delta', (e) => {
      if (gen.finished) return;                  // after a reconnect the server replays only what we missed
      clearReconnect();
      const d = parse(e);
      const now = performance.now();
      if (d.text) {
        turn.text += d.text;
        if (gen.ttft === null) {
          gen.ttft = now - t0;
          gen.firstAt = now;
          gen.firstTokens = gen.tokens + (d.tokens || 0);
          view.s.ttft.textContent = 'TTFT ' + Math.round(gen.ttft) + ' ms';
        }
        scheduleRender(gen);
      }
      gen.tokens += d.tokens || 0;
      view.s.tokens.textContent = gen.tokens + ' tokens';
      const secs = (now - gen.firstAt) / 1000;
      if (gen.firstAt && secs > 0.2) view.s.tps.textContent = ((gen.tokens - gen.firstTokens) / secs).toFixed(1) + ' tok/s';
    });
    es.addEventListener('done', (e) => {
      const d = parse(e);
      const u = d.usage || {}, t = d.timings || {};
      finish(gen, 'done', d.finish_reason === 'length' ? 'max tokens reached' : '');
      if (Number.isFinite(t.decode_tokens_per_sec)) view.s.tps.textContent = t.decode_tokens_per_sec.toFixed(1) + ' tok/s';
      const c = Number.isFinite(u.completion_tokens) ? u.completion_tokens : gen.tokens;
      view.s.tokens.textContent = c + ' tokens · ' + (u.prompt_tokens || 0) + ' prompt (' + (u.cached_tokens || 0) + ' cached)';
    });
    es.addEventListener('cancelled', () => finish(gen, 'cancelled', 'stopped'));
    es.addEventListener('error', (e) => {
      if (gen.finished) return;
      if (typeof e.data === 'string') {          // in-band `event: error` from the server
        const d = parse(e);
        finish(gen, 'error', (d.error && d.error.message) || 'generation failed');
        return;
      }
      if (es.readyState === EventSource.CONNECTING) {
        if (!gen.stopping) status('reconnecting…');
        if (!gen.lostTimer) gen.lostTimer = setTimeout(() => finish(gen, 'error', 'connection lost'), gen.resumeMs);
      } else {
        finish(gen, gen.stopping ? 'cancelled' : 'error', gen.stopping ? 'stopped' : 'connection lost');
      }
    });
  }

  function scheduleRender(gen) {
    if (gen.raf) return;
    gen.raf = requestAnimationFrame(() => { gen.raf = 0; render(gen); });
  }
  function render(gen) {
    renderMarkdown(gen.turn.text, gen.view.answer);
    scrollDown();
  }

  function finish(gen, state, msg) {
    if (gen.finished) return;
    gen.finished = true;
    gen.es.close();
    clearTimeout(gen.lostTimer);
    clearTimeout(gen.stopTimer);
    if (gen.raf) { cancelAnimationFrame(gen.raf); gen.raf = 0; }
    render(gen);
    gen.view.answer.dataset.state = state;
    gen.view.s.status.textContent = msg || '';
    if (active === gen) active = null;
    updateControls();
    scrollDown();
    const f = document.activeElement;            // hand focus back to the prompt unless the user is elsewhere
    if ((!f || f === document.body || f === ui.stop || f === ui.send) && !matchMedia('(pointer: coarse)').matches) ui.prompt.focus();
  }

  function cancelRequest(gen, keepalive) {
    return fetch(gen.cancelUrl, { method: 'DELETE', headers: authHeaders(), keepalive: !!keepalive }).catch(() => {});
  }

  function stop() {
    const gen = active;
    if (!gen || gen.stopping) return;
    gen.stopping = true;
    gen.view.s.status.textContent = 'stopping…';
    updateControls();
    cancelRequest(gen);
    gen.stopTimer = setTimeout(() => finish(gen, 'cancelled', 'stopped'), 2000);
  }

  function newChat() {
    const gen = active;
    if (gen) {
      gen.finished = true;
      gen.es.close();
      clearTimeout(gen.lostTimer);
      clearTimeout(gen.stopTimer);
      if (gen.raf) cancelAnimationFrame(gen.raf);
      cancelRequest(gen);
      active = null;
    }
    turns.length = 0;
    ui.messages.replaceChildren();
    showError('');
    stick = true;
    updateControls();
    ui.prompt.focus();
  }

  // ---------------------------------------------------------------- API key form

  function showKeyForm(msg) {
    ui.keyMsg.textContent = msg;
    ui.keyInput.value = '';
    ui.keyInput.placeholder = getKey() ? 'API key (one is set for this tab)' : 'API key';
    ui.keyForm.hidden = false;
    ui.keyInput.focus();
  }
  function hideKeyForm() { ui.keyForm.hidden = true; }

  ui.keyForm.addEventListener('submit', (e) => {
    e.preventDefault();
    setKey(ui.keyInput.value.trim());
    ui.keyInput.value = '';
    hideKeyForm();
    if (pendingText !== null) {
      if (!ui.prompt.value.trim()) ui.prompt.value = pendingText;
      pendingText = null;
      send();
    }
  });
  ui.keyCancel.addEventListener('click', () => { pendingText = null; hideKeyForm(); ui.prompt.focus(); });
  ui.setKey.addEventListener('click', () => showKeyForm('API key for this server (kept for this tab only; empty to clear).'));

  // ---------------------------------------------------------------- wiring

  function autosize() {
    ui.prompt.style.height = 'auto';
    ui.prompt.style.height = Math.min(ui.prompt.scrollHeight, 200) + 'px';
  }

  ui.composer.addEventListener('submit', (e) => { e.preventDefault(); send(); });
  ui.prompt.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      send();
    }
  });
  ui.prompt.addEventListener('input', autosize);
  ui.stop.addEventListener('click', stop);
  ui.newChat.addEventListener('click', newChat);
  ui.messages.addEventListener('scroll', () => { stick = atBottom(); }, { passive: true });
  window.addEventListener('pagehide', () => { if (active && !active.finished) cancelRequest(active, true); });

  updateControls();
  pollHealth();
})();
