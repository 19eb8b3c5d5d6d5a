// Proctor's console: the search page and the session page, over the JSON
// API (same origin, the session cookie and its CSRF token). No framework, no build step.
'use strict';

(function () {
  const body = document.body;
  const main = document.getElementById('main');
  const input = document.getElementById('q');
  const help = document.getElementById('help');
  const helpToggle = document.getElementById('help-toggle');
  const PAGE = 50;
  const EVENTS_PAGE = 200;
  // Timings the browser tests read (milliseconds since navigation start).
  const proctor = (window.__proctor = { timings: {} });

  helpToggle.addEventListener('click', () => {
    help.hidden = !help.hidden;
    helpToggle.setAttribute('aria-expanded', String(!help.hidden));
  });

  // ---- small helpers ----------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // RFC 3339 from the API (nanoseconds, UTC) shown as UTC to the
  // millisecond, with the local time on hover.
  function timeEl(iso) {
    if (!iso) return el('span', { class: 'time' }, '');
    const match = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(\.\d{1,3})?\d*Z$/.exec(iso);
    const shown = match ? `${match[1]} ${match[2]}${match[3] || ''} UTC` : iso;
    const date = new Date(match ? `${match[1]}T${match[2]}${match[3] || ''}Z` : iso);
    const local = isNaN(date) ? '' : 'local time: ' + date.toLocaleString();
    return el('time', { class: 'time', datetime: iso, title: local }, shown);
  }

  // The session's CSRF token, from this page: the API honours the session
  // cookie only on requests that carry it, which no other site can make.
  const csrf = document.querySelector('meta[name="proctor-csrf"]').content;

  // A GET, or with `body` a POST of it as JSON (a value searched for
  // travels in a body, never in a URL).
  async function api(path, body) {
    const headers = { Accept: 'application/json', 'X-Proctor-CSRF': csrf };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const response = await fetch(path, {
      method: body === undefined ? 'GET' : 'POST',
      credentials: 'same-origin',
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) {
      location.href = '/login?next=' + encodeURIComponent(location.pathname + location.search + location.hash);
      throw new Error('signed out: signing in again');
    }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(data.error || `the server answered ${response.status}`);
    return data;
  }

  // Masked values, as the gateway writes them: `[rule:masked]`,
  // `[rule:tok_…]`, and values starred but for their last four characters.
  const MASKED = /\[[A-Za-z0-9_.:*%-]+:(?:masked|tok_[0-9a-f]+)\]|\*{2,}[\s*.-]*[0-9A-Za-z]{0,4}/g;

  function withMasks(text) {
    const fragment = document.createDocumentFragment();
    let at = 0;
    for (const found of String(text).matchAll(MASKED)) {
      fragment.append(text.slice(at, found.index));
      fragment.append(el('mark', { class: 'masked', title: 'masked by Proctor' }, found[0]));
      at = found.index + found[0].length;
    }
    fragment.append(String(text).slice(at));
    return fragment;
  }

  // A snippet from the index: escaped text with matches in <b>; anything
  // else in it is shown as text.
  function snippetEl(hit) {
    const node = el('div', { class: 'snippet' });
    const template = document.createElement('template');
    template.innerHTML = hit.snippet || '';
    const safe = [...template.content.querySelectorAll('*')].every((n) => n.tagName === 'B');
    if (hit.snippet && safe) node.append(template.content);
    else node.append(withMasks(hit.text || ''));
    return node;
  }

  // ---- exporting evidence ---------------------------------------------

  // A form that exports `selection` (`{ query }` or `{ sessions }`) as a
  // signed evidence bundle: the server records the export (with the reason
  // given) before it sends the .tar, which the browser then saves.
  function exportForm(selection, label) {
    const reason = el('input', { type: 'text', id: 'export-reason', placeholder: 'why (kept, signed, in the bundle)', 'aria-label': 'Reason for the export' });
    const button = el('button', { type: 'submit', id: 'export' }, label);
    const status = el('span', { class: 'summary', id: 'export-status', 'aria-live': 'polite' });
    const form = el('form', { class: 'export', id: 'export-form' }, reason, button, status);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      button.disabled = true;
      status.textContent = 'Exporting…';
      try {
        const body = { ...selection, format: 'bundle' };
        if (reason.value.trim()) body.reason = reason.value.trim();
        const response = await fetch('/api/exports', {
          method: 'POST',
          credentials: 'same-origin',
          headers: { 'Content-Type': 'application/json', 'X-Proctor-CSRF': csrf },
          body: JSON.stringify(body),
        });
        if (!response.ok) {
          const data = await response.json().catch(() => ({}));
          throw new Error(data.error || `the server answered ${response.status}`);
        }
        const blob = await response.blob();
        const name = (/filename="([^"]+)"/.exec(response.headers.get('Content-Disposition') || '') || [])[1] || 'proctor-evidence.tar';
        const sha256 = response.headers.get('X-Proctor-SHA256') || '';
        const link = el('a', { href: URL.createObjectURL(blob), download: name, id: 'export-download' }, name);
        document.body.append(link);
        link.click();
        link.remove();
        status.replaceChildren(`Exported ${response.headers.get('X-Proctor-Sessions')} session(s) as ${name}, SHA-256 `,
          el('code', { id: 'export-sha256' }, sha256), '. Check it with proctor verify --bundle.');
      } catch (error) {
        status.replaceChildren(el('span', { class: 'error', role: 'alert' }, error.message));
      }
      button.disabled = false;
    });
    return form;
  }

  function badge(text, kind) {
    return text ? el('span', { class: `badge ${kind || text}` }, text) : null;
  }

  // ---- the search page --------------------------------------------------

  function searchPage() {
    let q = new URLSearchParams(location.search).get('q') || '';
    input.value = q;
    document.getElementById('search-form').addEventListener('submit', (event) => {
      event.preventDefault();
      q = input.value.trim();
      history.pushState(null, '', q ? '/?q=' + encodeURIComponent(q) : '/');
      run(q);
    });
    // Who saw a value: found by the token that replaced it, the value
    // neither in the URL nor in the history.
    document.getElementById('value-form').addEventListener('submit', async (event) => {
      event.preventDefault();
      const field = document.getElementById('value');
      const value = field.value;
      if (!value.trim()) return;
      main.setAttribute('aria-busy', 'true');
      try {
        const data = await api('/api/search/value', { value, limit: PAGE });
        renderResults(data.token, data, (offset) => api('/api/search/value', { value, limit: PAGE, offset }));
        document.getElementById('summary').prepend(`The value's token is ${data.token}. `);
      } catch (error) {
        main.replaceChildren(el('div', { class: 'error', role: 'alert', id: 'search-error' }, error.message));
      }
      main.removeAttribute('aria-busy');
    });
    window.addEventListener('popstate', () => {
      q = new URLSearchParams(location.search).get('q') || '';
      input.value = q;
      run(q);
    });
    run(q);
  }

  let generation = 0;

  async function run(q) {
    const mine = ++generation;
    const started = performance.now();
    main.setAttribute('aria-busy', 'true');
    if (!main.firstChild) main.append(el('p', { class: 'loading' }, 'Searching…'));
    let data;
    try {
      data = await api('/api/search?' + new URLSearchParams({ q, limit: PAGE }));
    } catch (error) {
      if (mine !== generation) return;
      main.replaceChildren(el('div', { class: 'error', role: 'alert', id: 'search-error' }, error.message));
      main.removeAttribute('aria-busy');
      return;
    }
    if (mine !== generation) return;
    renderResults(q, data);
    main.removeAttribute('aria-busy');
    proctor.timings.search = performance.now() - started;
    body.dataset.searchMs = proctor.timings.search.toFixed(1);
  }

  // `page(offset)`: the next page of the same search.
  function renderResults(q, data, page = (offset) => api('/api/search?' + new URLSearchParams({ q, limit: PAGE, offset }))) {
    const list = el('ol', { class: 'hits', id: 'hits' });
    const summary = el('p', { class: 'summary', id: 'summary', 'aria-live': 'polite' });
    let shown = 0;
    const add = (hits) => {
      for (const hit of hits) list.append(el('li', {}, hitEl(hit, q)));
      shown += hits.length;
      const one = data.total === 1;
      const what = `${data.total.toLocaleString()} event${one ? '' : 's'}`;
      summary.textContent = `${what}${q ? ` match${one ? 'es' : ''} ${q}` : ''}, newest first; showing ${shown.toLocaleString()}`;
      more.hidden = shown >= data.total;
    };
    const more = el('button', {
      class: 'more',
      id: 'more',
      onclick: async () => {
        more.disabled = true;
        try {
          const next = await page(shown);
          add(next.hits);
        } catch (error) {
          more.after(el('div', { class: 'error', role: 'alert' }, error.message));
        }
        more.disabled = false;
      },
    }, 'More results');
    add(data.hits);
    const results = el('section', { 'aria-label': 'Results' }, summary);
    if (data.total === 0) {
      results.append(el('div', { class: 'empty', id: 'no-results' },
        q ? `Nothing recorded matches ${q}. Try fewer words, another field, or a wider time range (since:30d).`
          : 'Nothing has been recorded yet.'));
    } else {
      results.append(q ? exportForm({ query: q }, 'Export these sessions') : '', list, more);
    }
    main.replaceChildren(el('div', { class: 'results' }, facetsEl(q, data.facets || {}), results));
  }

  function hitEl(hit, q) {
    const href = `/sessions/${encodeURIComponent(hit.session_id)}${q ? '?q=' + encodeURIComponent(q) : ''}#seq=${hit.seq}`;
    return el('a', { class: 'hit', href, 'data-session': hit.session_id, 'data-seq': hit.seq },
      el('div', { class: 'meta' },
        timeEl(hit.time),
        badge(hit.kind, hit.kind),
        badge(hit.outcome),
        hit.subject ? el('span', { title: 'subject' }, hit.subject) : null,
        hit.resource ? el('span', { title: 'resource' }, hit.resource) : null,
        hit.actor ? el('span', { title: 'who acted', class: 'actor' }, `by ${hit.actor}`) : null,
        hit.tag ? el('span', { title: 'command tag' }, hit.tag) : null,
        el('span', { class: 'mono', title: 'session and event' }, `${hit.session_id.slice(0, 8)} #${hit.seq}`)),
      snippetEl(hit));
  }

  function facetsEl(q, facets) {
    const aside = el('aside', { class: 'facets', 'aria-label': 'Filters', id: 'facets' });
    for (const name of ['kind', 'outcome', 'subject', 'resource']) {
      const values = Object.entries(facets[name] || {}).sort((a, b) => b[1] - a[1]).slice(0, 12);
      if (!values.length) continue;
      aside.append(el('h3', {}, name));
      aside.append(el('ul', {}, values.map(([value, count]) =>
        el('li', {}, el('button', {
          type: 'button',
          'data-facet': `${name}:${value}`,
          onclick: () => {
            const term = /[\s"():]/.test(value) ? `${name}:"${value.replace(/"/g, '')}"` : `${name}:${value}`;
            input.value = q.includes(term) ? q : `${q} ${term}`.trim();
            document.getElementById('search-form').requestSubmit();
          },
        }, el('span', {}, value), el('span', { class: 'count' }, count.toLocaleString()))))));
    }
    if (!aside.childElementCount) aside.append(el('p', { class: 'summary' }, 'No filters for these results.'));
    return aside;
  }

  // ---- the session page -------------------------------------------------

  // What to look for on the page: the query's words and phrases, not its
  // fields and operators.
  function matchTerms(q) {
    const terms = [];
    // Fields with quoted values (`subject:"a b"`) first, so that their
    // words are not taken for words of the search.
    const re = /[A-Za-z_]+:"[^"]*"|"([^"]+)"|(\S+)/g;
    for (const m of q.matchAll(re)) {
      if (!m[1] && !m[2]) continue;
      const word = m[1] || m[2];
      if (!m[1] && (/^[A-Za-z_]+:/.test(word) || /^(AND|OR|NOT)$/.test(word) || word.startsWith('-'))) continue;
      const clean = word.replace(/^[()]+|[()]+$/g, '').toLowerCase();
      if (clean) terms.push(clean);
    }
    return terms;
  }


  // The 256 colours of an xterm: 16 named, a 6×6×6 cube, 24 greys.
  const PALETTE = (() => {
    const named = ['#000000', '#cd3131', '#0dbc79', '#e5e510', '#2472c8', '#bc3fbc', '#11a8cd', '#e5e5e5',
      '#666666', '#f14c4c', '#23d18b', '#f5f543', '#3b8eea', '#d670d6', '#29b8db', '#ffffff'];
    const hex = (n) => n.toString(16).padStart(2, '0');
    const steps = [0, 95, 135, 175, 215, 255];
    for (let i = 16; i < 232; i++) {
      const n = i - 16;
      named.push(`#${hex(steps[Math.floor(n / 36)])}${hex(steps[Math.floor(n / 6) % 6])}${hex(steps[n % 6])}`);
    }
    for (let i = 0; i < 24; i++) named.push(`#${hex(8 + i * 10).repeat(3)}`);
    return named;
  })();
  const TERM_FG = '#d4d4d4';
  const TERM_BG = '#1e1e1e';
  const colour = (c, fallback) => (c === undefined ? fallback : typeof c === 'number' ? PALETTE[c] : c);

  // A terminal session's player: the screen at any moment (drawn by the
  // server from its keyframes), played on at 1–16× from there, stepping
  // from command to command. `moved(seq)` is told where it is.
  function terminalPlayer(id, moved) {
    const screenEl = el('div', { class: 'term', id: 'term', role: 'img', 'aria-label': 'Terminal screen' });
    const playButton = el('button', { type: 'button', id: 'play', 'aria-pressed': 'false' }, 'Play');
    const speed = el('select', { id: 'speed', 'aria-label': 'Speed' },
      ...[1, 2, 4, 8, 16].map((n) => el('option', { value: String(n) }, `${n}×`)));
    const prev = el('button', { type: 'button', id: 'prev-command', title: 'Previous command' }, '‹ Command');
    const nextButton = el('button', { type: 'button', id: 'next-command', title: 'Next command' }, 'Command ›');
    const scrub = el('input', { type: 'range', id: 'scrub', min: '0', max: '1000', value: '0', 'aria-label': 'Position in the session' });
    const clock = el('span', { class: 'term-clock', id: 'term-clock' }, '');
    const section = el('section', { class: 'player', id: 'player', hidden: true, 'aria-label': 'Terminal player' },
      el('div', { class: 'player-controls' }, prev, playButton, nextButton, speed, scrub, clock), screenEl);

    let shown = null; // { seq, ms, rows, cols, cursor }
    let lines = [];
    let rowEls = [];
    let playing = false;
    let commands = [];
    let span = null; // { start, end } in ms
    let token = 0; // bumped by every seek: stale answers are dropped
    let channel = null; // the terminal shown, once one is
    // Whether the session may have a terminal (an SSH session), once known.
    let enable;
    const ready = new Promise((resolve) => { enable = resolve; });

    function runEl(run) {
      const node = el('span', {}, run.t);
      let fg = colour(run.fg, null);
      let bg = colour(run.bg, null);
      if (run.r) [fg, bg] = [bg || TERM_BG, fg || TERM_FG];
      if (fg) node.style.color = fg;
      if (bg) node.style.backgroundColor = bg;
      if (run.b) node.style.fontWeight = 'bold';
      if (run.d) node.style.opacity = '0.6';
      if (run.i) node.style.fontStyle = 'italic';
      if (run.u) node.style.textDecoration = 'underline';
      return node;
    }

    function drawRow(row) {
      const line = lines[row] || [];
      const node = rowEls[row];
      node.replaceChildren(...line.map(runEl));
      node.dataset.text = line.map((r) => r.t).join('');
    }

    function resize(rows, cols) {
      if (shown && rowEls.length === rows && shown.cols === cols) return;
      rowEls = Array.from({ length: rows }, () => el('div', { class: 'term-row' }));
      screenEl.replaceChildren(...rowEls);
      screenEl.style.setProperty('--cols', String(cols));
      lines = Array.from({ length: rows }, (_, i) => lines[i] || []);
      for (let r = 0; r < rows; r++) drawRow(r);
    }

    function cursorAt(cursor) {
      screenEl.querySelectorAll('.term-cursor').forEach((n) => n.classList.remove('term-cursor'));
      const [row, col, visible] = cursor;
      screenEl.dataset.cursor = `${row},${col}`;
      if (!visible || !rowEls[row]) return;
      rowEls[row].classList.add('term-cursor');
      rowEls[row].style.setProperty('--cursor-col', String(col));
    }

    function place(at) {
      shown = { seq: at.seq, ms: at.ms, rows: at.rows, cols: at.cols };
      body.dataset.screenSeq = String(at.seq);
      clock.textContent = at.time ? at.time.replace('T', ' ').slice(0, 23) : '';
      if (span) scrub.value = String(Math.round(((at.ms - span.start) / Math.max(span.end - span.start, 1)) * 1000));
      moved(at.seq);
    }

    function paint(view) {
      lines = view.lines;
      rowEls = [];
      shown = null;
      resize(view.rows, view.cols);
      cursorAt(view.cursor);
      place(view);
    }

    function apply(frame) {
      if (!shown || frame.rows !== shown.rows || frame.cols !== shown.cols) {
        lines.length = frame.rows;
        shown = { ...(shown || {}), rows: frame.rows, cols: frame.cols };
        rowEls = [];
        resize(frame.rows, frame.cols);
      }
      for (const [row, runs] of frame.changed) {
        lines[row] = runs;
        if (rowEls[row]) drawRow(row);
      }
      cursorAt(frame.cursor);
      place(frame);
    }

    async function show(query) {
      const mine = ++token;
      const asked = channel === null ? query : { ...query, channel };
      const view = await api(`/api/sessions/${encodeURIComponent(id)}/screen?` + new URLSearchParams(asked));
      if (mine !== token) return null;
      channel = view.channel;
      section.hidden = false;
      section.parentElement.classList.add('with-player');
      paint(view);
      body.dataset.screenMs = String(view.server_ms);
      return view;
    }

    // Playback: frames fetched a page ahead, shown at their moments (scaled
    // by the speed; a pause longer than 2 s of session time is cut to 2 s).
    async function play() {
      if (playing || !shown) return;
      playing = true;
      playButton.textContent = 'Pause';
      playButton.setAttribute('aria-pressed', 'true');
      body.dataset.playing = 'true';
      const mine = token;
      let after = shown.seq;
      let queue = [];
      let more = true;
      let sessionMs = shown.ms;
      let wall = performance.now();
      // One page asked for at a time.
      let fetching = null;
      const fetchPage = () => {
        if (!fetching) {
          fetching = (async () => {
            const query = { after_seq: after, limit: 500, ...(channel === null ? {} : { channel }) };
            const page = await api(`/api/sessions/${encodeURIComponent(id)}/frames?` + new URLSearchParams(query));
            if (mine !== token) return;
            queue = queue.concat(page.frames);
            if (page.frames.length) after = page.frames[page.frames.length - 1].seq;
            if (page.next_seq === null) more = false;
            else after = Math.max(after, page.next_seq - 1);
          })().finally(() => { fetching = null; });
        }
        return fetching;
      };
      try {
        await fetchPage();
        while (playing && mine === token) {
          if (!queue.length) {
            if (!more) break;
            await fetchPage();
            continue;
          }
          if (queue.length < 100 && more) fetchPage().catch(() => { more = false; });
          const frame = queue[0];
          const rate = Number(speed.value) || 1;
          const gap = Math.min(frame.ms - sessionMs, 2000);
          const due = wall + Math.max(gap, 0) / rate;
          const now = performance.now();
          if (due > now) {
            await new Promise((resolve) => setTimeout(resolve, Math.min(due - now, 100)));
            continue;
          }
          queue.shift();
          wall = due;
          sessionMs = frame.ms;
          if (mine === token) apply(frame);
        }
      } finally {
        if (mine === token) pause();
      }
    }

    function pause() {
      playing = false;
      playButton.textContent = 'Play';
      playButton.setAttribute('aria-pressed', 'false');
      body.dataset.playing = 'false';
    }

    async function seek(seq) {
      if (!(await ready)) return;
      if (shown && seq === shown.seq && !playing) return;
      pause();
      try {
        await show({ seq });
      } catch (error) {
        // Not a terminal session (or not yet at its terminal): no player.
        if (!shown) section.hidden = true;
      }
    }

    function command(direction) {
      if (!shown) return;
      const at = shown.seq;
      const target = direction > 0 ? commands.find((s) => s > at) : [...commands].reverse().find((s) => s < at);
      if (target !== undefined) seek(target);
    }

    playButton.addEventListener('click', () => (playing ? pause() : play()));
    prev.addEventListener('click', () => command(-1));
    nextButton.addEventListener('click', () => command(1));
    scrub.addEventListener('change', async () => {
      if (!span) return;
      pause();
      const ms = span.start + (Number(scrub.value) / 1000) * (span.end - span.start);
      token++;
      await show({ time: new Date(ms).toISOString() }).catch(() => null);
    });

    return {
      section,
      seek,
      playing: () => playing,
      enable,
      setCommands(seqs) { commands = [...seqs].sort((a, b) => a - b); },
      setSpan(start, end) { span = { start, end }; },
      toggle() { return playing ? pause() : play(); },
    };
  }

  function sessionPage() {
    const id = body.dataset.session;
    const q = new URLSearchParams(location.search).get('q') || '';
    input.value = q;
    const terms = matchTerms(q);
    const head = el('section', { class: 'session-head', id: 'session-head', 'aria-label': 'Session' }, el('h1', {}, `Session ${id}`));
    const timeline = el('div', { class: 'timeline', id: 'timeline', role: 'group', 'aria-label': 'Timeline' });
    const list = el('ol', { class: 'events', id: 'events', 'aria-label': 'Events' });
    const earlier = el('button', { id: 'earlier', hidden: true, class: 'more' }, 'Earlier events');
    // Server parameters reported at start-up: folded under the header, not
    // a wall of rows before the first statement.
    const parameters = el('dl', { class: 'facts', id: 'parameters' });
    const folded = el('details', { class: 'parameters', id: 'parameters-fold', hidden: true },
      el('summary', {}, 'Start-up parameters'), parameters);
    const shownParameters = new Set();
    // Where the session's work began: parameters reported after it (a SET
    // ROLE, a session authorization) stay in the timeline.
    let workFrom = null;
    const sentinel = el('div', { class: 'load', id: 'sentinel' }, 'Loading events…');
    // A terminal session's player, shown once its screen is found; it
    // follows the current event, and the current event follows it.
    let following = false;
    const player = terminalPlayer(id, (seq) => {
      if (!rows.has(seq)) return;
      following = true;
      setCurrent(seq, { scroll: player.playing() ? 'nearest' : 'center' });
      following = false;
    });
    // Beside the events on a wide screen, the player stays in view.
    const sessionBody = el('div', { class: 'session-body' }, player.section,
      el('div', { class: 'session-events' }, timeline, earlier, list, sentinel));
    main.replaceChildren(head, folded, sessionBody);

    const rows = new Map(); // seq -> li
    let first = null; // lowest seq shown
    let next = 0; // seq to load after the last shown (null: the end)
    let current = null;
    let summary = null;
    let queue = Promise.resolve();
    let busy = 0;

    // Whether an event's values (not its field names) hold every term.
    function isMatch(event) {
      if (!terms.length) return false;
      const text = JSON.stringify(Object.values(event)).toLowerCase();
      return terms.every((t) => text.includes(t));
    }

    async function load(from, { before = false, replace = false } = {}) {
      const data = await api(`/api/sessions/${encodeURIComponent(id)}/events?` + new URLSearchParams({ from_seq: from, limit: EVENTS_PAGE }));
      if (replace) {
        list.replaceChildren();
        rows.clear();
        first = null;
      }
      const fresh = data.events.filter((e) => !rows.has(e.seq) && !shownParameters.has(e.seq));
      for (const e of fresh) {
        if (['statement', 'prepare', 'cancel', 'raw_frame', 'copy'].includes(e.kind) && (workFrom === null || e.seq < workFrom)) workFrom = e.seq;
      }
      const startup = (e) => e.kind === 'parameter_status' && (workFrom === null || e.seq < workFrom);
      for (const e of fresh.filter(startup)) {
        shownParameters.add(e.seq);
        parameters.append(el('div', { 'data-seq': e.seq }, el('dt', {}, e.parameter || ''), el('dd', {}, withMasks(e.value || ''))));
        folded.hidden = false;
        folded.querySelector('summary').textContent = `Start-up parameters (${shownParameters.size})`;
      }
      const items = fresh.filter((e) => !startup(e)).map((event) => {
        const row = eventEl(event, isMatch(event));
        rows.set(event.seq, row);
        return row;
      });
      if (before) list.prepend(...items);
      else list.append(...items);
      if (data.events.length) {
        const lowest = data.events[0].seq;
        first = first === null ? lowest : Math.min(first, lowest);
      }
      if (!before) next = data.next_seq ?? null;
      earlier.hidden = !(first > 0);
      sentinel.textContent = next === null ? (rows.size ? 'End of the session.' : 'This session has no events.') : 'Loading more…';
      drawMarks();
      return data;
    }

    // Loads run one after another, each seeing what the one before left.
    function loadOnce(task) {
      busy++;
      const run = queue.then(task).finally(() => { busy--; });
      queue = run.catch(() => {});
      return run;
    }

    function setCurrent(seq, { scroll = true } = {}) {
      const row = rows.get(seq);
      if (!row) return false;
      if (current !== null && rows.get(current)) {
        rows.get(current).classList.remove('current');
        rows.get(current).removeAttribute('aria-current');
      }
      current = seq;
      row.classList.add('current');
      row.setAttribute('aria-current', 'true');
      if (scroll) row.scrollIntoView({ block: scroll === 'center' ? 'center' : 'nearest' });
      history.replaceState(null, '', `${location.pathname}${location.search}#seq=${seq}`);
      body.dataset.current = String(seq);
      if (!following && !player.playing()) player.seek(seq);
      return true;
    }

    const ordered = () => [...rows.keys()].sort((a, b) => a - b);

    async function step(delta) {
      let seqs = ordered();
      let at = current === null ? -1 : seqs.indexOf(current);
      if (delta > 0 && at + 1 >= seqs.length && next !== null) {
        await loadOnce(() => (next === null ? null : load(next)));
      }
      if (delta < 0 && at <= 0 && first > 0) {
        await loadOnce(() => load(Math.max(0, first - EVENTS_PAGE), { before: true }));
      }
      seqs = ordered();
      at = current === null ? -1 : seqs.indexOf(current);
      const target = seqs[Math.min(Math.max(at + delta, 0), seqs.length - 1)];
      if (target !== undefined) setCurrent(target);
    }

    async function nextMatch(direction) {
      if (!terms.length) return;
      for (let pages = 0; pages < 50; pages++) {
        const seqs = ordered().filter((s) => rows.get(s).classList.contains('match'));
        const found = direction > 0
          ? seqs.find((s) => current === null || s > current)
          : [...seqs].reverse().find((s) => current === null || s < current);
        if (found !== undefined) return setCurrent(found);
        if (direction > 0 && next !== null) await loadOnce(() => (next === null ? null : load(next)));
        else if (direction < 0 && first > 0) await loadOnce(() => load(Math.max(0, first - EVENTS_PAGE), { before: true }));
        else return;
      }
    }

    async function toStart() {
      if (!rows.has(0) && first !== 0) await loadOnce(() => load(0, { replace: true }));
      const seqs = ordered();
      if (seqs.length) setCurrent(seqs[0]);
    }

    async function toEnd() {
      await summaryLoaded.catch(() => null);
      const total = summary ? summary.events : null;
      if (next !== null && total) await loadOnce(() => load(Math.max(0, total - EVENTS_PAGE), { replace: true }));
      while (next !== null) await loadOnce(() => (next === null ? null : load(next)));
      const seqs = ordered();
      if (seqs.length) setCurrent(seqs[seqs.length - 1]);
    }

    // The timeline: the session's statements, errors and decisions from the
    // index (all of the session, not only what is loaded), else what is
    // loaded.
    let indexedMarks = null;

    async function jump(seq) {
      if (setCurrent(seq, { scroll: 'center' })) return;
      await loadOnce(() => load(Math.max(0, seq - 20), { replace: true }));
      setCurrent(seq, { scroll: 'center' });
    }

    function markClass(kind, outcome) {
      if (kind === 'statement') return 'statement';
      if (kind === 'error') return 'error';
      if (kind === 'policy_decision') return outcome === 'block' ? 'block' : outcome === 'hold' ? 'hold' : outcome === 'flag' ? 'hold' : 'approval';
      if (kind === 'command' || kind === 'exec') return 'command';
      return /approved$/.test(kind) ? 'approval' : '';
    }

    function drawMarks() {
      if (!summary || !summary.start) return;
      const start = Date.parse(summary.start.slice(0, 23) + 'Z');
      const end = Date.parse((summary.end || summary.start).slice(0, 23) + 'Z');
      const span = Math.max(end - start, 1);
      const source = indexedMarks || [...rows.values()].map((row) => ({
        seq: Number(row.dataset.seq), time: row.dataset.time, kind: row.dataset.kind, mark: row.dataset.mark,
      }));
      const marks = [];
      for (const m of source) {
        const mark = m.mark || markClass(m.kind, m.outcome);
        if (!mark) continue;
        const at = (Date.parse(String(m.time).slice(0, 23).replace(/Z?$/, 'Z')) - start) / span;
        const button = el('button', {
          type: 'button',
          class: `mark ${mark}`,
          title: `#${m.seq} ${m.kind}${m.outcome ? ` (${m.outcome})` : ''}`,
          'aria-label': `event ${m.seq}: ${m.kind}${m.outcome ? ` ${m.outcome}` : ''}`,
          'data-seq': m.seq,
          onclick: () => jump(m.seq),
        });
        // Through the style object: the page's policy allows no inline
        // style attributes.
        button.style.left = `calc(${(Math.min(Math.max(at, 0), 1) * 100).toFixed(3)}% - 1px)`;
        marks.push(button);
      }
      timeline.replaceChildren(...marks);
    }

    document.addEventListener('keydown', (event) => {
      const target = event.target;
      if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement || event.ctrlKey || event.metaKey || event.altKey) return;
      const keys = {
        j: () => step(1), ArrowDown: () => step(1), k: () => step(-1), ArrowUp: () => step(-1),
        n: () => nextMatch(1), N: () => nextMatch(-1), g: toStart, Home: toStart, G: toEnd, End: toEnd,
        p: () => player.toggle(),
      };
      const action = keys[event.key];
      if (!action) return;
      event.preventDefault();
      action();
    });

    earlier.addEventListener('click', () => loadOnce(() => load(Math.max(0, first - EVENTS_PAGE), { before: true })));
    // A link to another event of the session (a decision's statement).
    main.addEventListener('click', (event) => {
      const link = event.target.closest && event.target.closest('a[data-ref]');
      if (!link) return;
      event.preventDefault();
      jump(Number(link.dataset.ref));
    });
    new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting) && next !== null && rows.size && !busy) {
        loadOnce(() => (next === null ? null : load(next)));
      }
    }).observe(sentinel);

    // The first event at or after a moment (RFC 3339, UTC).
    async function toTime(text) {
      // UTC unless the moment says otherwise.
      const wanted = Date.parse(/([zZ]|[+-]\d\d:?\d\d)$/.test(text) ? text : `${text}Z`);
      if (isNaN(wanted)) return;
      const timeOf = (s) => Date.parse(rows.get(s).dataset.time.slice(0, 23) + 'Z');
      // Earlier pages first while what is shown starts after the moment.
      for (let pages = 0; pages < 100 && first > 0 && rows.size && timeOf(ordered()[0]) > wanted; pages++) {
        await loadOnce(() => load(Math.max(0, first - EVENTS_PAGE), { before: true }));
      }
      for (let pages = 0; pages < 100; pages++) {
        const hit = ordered().find((s) => timeOf(s) >= wanted);
        if (hit !== undefined) return setCurrent(hit, { scroll: 'center' });
        if (next === null) return;
        await loadOnce(() => (next === null ? null : load(next)));
      }
    }

    // A link within the page (or an edited address) moves to its event.
    window.addEventListener('hashchange', () => {
      const moved = new URLSearchParams(location.hash.slice(1));
      const seq = Number(moved.get('seq'));
      if (moved.has('seq') && Number.isInteger(seq) && seq >= 0 && seq !== current) jump(seq);
      else if (moved.has('time')) toTime(moved.get('time'));
    });

    // Where the link points: #seq=N, or #time=RFC3339 (the first event at or
    // after it).
    const hash = new URLSearchParams(location.hash.slice(1));
    const asked = Number(hash.get('seq'));
    const wantSeq = hash.has('seq') && Number.isInteger(asked) && asked >= 0 ? asked : null;
    const wantTime = hash.get('time');
    const from = wantSeq !== null ? Math.max(0, wantSeq - 20) : 0;

    const summaryLoaded = api(`/api/sessions/${encodeURIComponent(id)}`).then((s) => {
      summary = s;
      player.enable(s.protocol === 'ssh');
      if (s.start) player.setSpan(Date.parse(s.start.slice(0, 23) + 'Z'), Date.parse((s.end || s.start).slice(0, 23) + 'Z'));
      head.replaceChildren(headEl(s));
      drawMarks();
    });
    summaryLoaded.catch((error) => {
      player.enable(false);
      head.append(el('div', { class: 'error', role: 'alert' }, error.message));
    });

    loadOnce(() => load(from)).then(async () => {
      proctor.timings.firstEvents = performance.now();
      body.dataset.firstEventsMs = proctor.timings.firstEvents.toFixed(1);
      // The whole session's marks once its first events are shown.
      summaryLoaded.then(() => api(`/api/sessions/${encodeURIComponent(id)}/marks`)).then((found) => {
        indexedMarks = found.marks;
        player.setCommands(found.marks.filter((m) => m.kind === 'command' || m.kind === 'exec').map((m) => m.seq));
        drawMarks();
      }).catch(() => {});
      if (wantSeq !== null) {
        setCurrent(wantSeq, { scroll: 'center' }) || setCurrent(ordered()[0]);
      } else if (wantTime) {
        await toTime(wantTime);
      } else if (terms.length) {
        nextMatch(1);
      }
      main.focus({ preventScroll: true });
    }).catch((error) => {
      sentinel.replaceChildren(el('div', { class: 'error', role: 'alert', id: 'session-error' }, error.message));
    });
  }

  function headEl(s) {
    const start = s.start_event || {};
    const fact = (label, value) => (value === null || value === undefined || value === '' ? null
      : el('div', {}, el('dt', {}, label), el('dd', {}, value instanceof Node ? value : String(value))));
    const masking = start.masking_profile || (s.protocol === 'control' ? null : 'none');
    return el('div', {},
      el('h1', {}, `${s.subject || 'unknown subject'} on ${s.resource || s.protocol}`),
      s.protocol === 'control' || s.protocol === 'system' ? null : exportForm({ sessions: [s.session_id] }, 'Export this session'),
      el('dl', { class: 'facts' },
        fact('session', el('span', { class: 'mono' }, s.session_id)),
        fact('subject', s.subject),
        fact('groups', (start.groups || []).join(', ')),
        fact('from', start.client_addr),
        fact('resource', s.resource),
        fact('protocol', s.protocol),
        fact('database', start.database),
        fact('as', start.target_user),
        fact('grant', start.grant_id ? el('a', { href: '/?q=' + encodeURIComponent(`grant:${start.grant_id}`) }, start.grant_id) : null),
        fact('approved by', approvers(s.grant_events || [])),
        fact('masking', masking),
        fact('client', start.application_name),
        fact('TLS', start.tls),
        fact('start', timeEl(s.start)),
        fact('end', s.live ? 'live' : timeEl(s.end)),
        fact('end reason', s.end_reason),
        fact('events', s.events !== undefined ? Number(s.events).toLocaleString() : null)));
  }

  // Who approved the session's grant (the policy, or people), from its
  // grant events.
  function approvers(events) {
    const names = events.filter((e) => /^grant_(partially_)?approved$/.test(e.kind)).map((e) => e.actor || 'policy');
    return names.length ? [...new Set(names)].join(', ') : null;
  }

  // One event as a row: seq, time, kind, and what it says.
  function eventEl(e, match) {
    const outcome = e.outcome || '';
    const mark = e.kind === 'statement' ? 'statement'
      : e.kind === 'error' ? 'error'
        : e.kind === 'policy_decision' && outcome === 'block' ? 'block'
          : e.kind === 'policy_decision' && outcome === 'hold' ? 'hold'
            : e.kind === 'policy_decision' ? 'approval'
              : /approved$/.test(e.kind) ? 'approval' : '';
    return el('li', {
      class: `event${match ? ' match' : ''}`,
      id: `seq-${e.seq}`,
      'data-seq': e.seq,
      'data-kind': e.kind,
      'data-time': e.time || '',
      'data-mark': mark || null,
      tabindex: -1,
    },
    el('span', { class: 'seq' }, `#${e.seq}`),
    timeEl(e.time),
    el('span', { class: 'kind' }, badge(e.kind, e.kind), ' ', e.direction === 'client_to_target' ? '→' : e.direction === 'target_to_client' ? '←' : ''),
    el('div', { class: 'body' }, eventBody(e)));
  }

  function pre(text, cls) {
    return el('pre', { class: cls || null }, withMasks(text || ''));
  }

  function eventBody(e) {
    switch (e.kind) {
      case 'statement':
      case 'prepare': {
        const params = (e.params || []).map((p, i) => `$${i + 1} = ${p === null ? 'NULL' : `'${p}'`}`).join(', ');
        return [
          e.kind === 'prepare' ? el('div', { class: 'params' }, `prepare ${e.statement_name || '(unnamed)'}`) : null,
          pre(e.sql, 'sql'),
          params ? el('div', { class: 'params' }, withMasks(`params: ${params}`)) : null,
        ];
      }
      case 'result': {
        const count = e.row_count ?? 0;
        const line = [e.command_tag || 'result', `${count.toLocaleString()} row${count === 1 ? '' : 's'}`,
          e.duration_ns !== undefined ? `${(e.duration_ns / 1e6).toFixed(3)} ms` : null].filter(Boolean).join(' · ');
        const rows = e.sample_rows || [];
        if (!rows.length) return el('div', {}, line);
        const columns = e.result_columns || [];
        const table = el('table', {},
          columns.length ? el('thead', {}, el('tr', {}, columns.map((c) => el('th', { scope: 'col' }, c)))) : null,
          el('tbody', {}, rows.map((row) => el('tr', {}, row.map((v) =>
            el('td', {}, v === null ? el('span', { class: 'null' }, 'NULL') : withMasks(v)))))));
        return [el('div', {}, line, e.sample_truncated ? ' (sample)' : ''), table];
      }
      case 'error':
      case 'notice':
        return [
          el('div', {}, badge(e.severity || e.kind, 'error'), ' ', el('code', {}, e.sqlstate || ''), ' ', withMasks(e.message || '')),
          e.detail ? pre(e.detail) : null,
        ];
      case 'policy_decision':
        return el('div', {}, badge(e.outcome), ' ', e.rule ? el('span', {}, 'rule ', el('code', {}, e.rule)) : '',
          e.review_id ? el('span', {}, ' review ', el('code', {}, e.review_id)) : '',
          e.ref_seq !== undefined ? el('span', {}, ' on ', el('a', { href: `#seq=${e.ref_seq}`, 'data-ref': e.ref_seq }, `#${e.ref_seq}`)) : '',
          e.message ? el('div', {}, withMasks(e.message)) : null);
      case 'terminal_input':
      case 'terminal_output':
        return pre(e.data);
      case 'masking_applied':
        return el('div', {}, 'masked: ', (e.masked || []).map((m) => `${m.rule} × ${m.count}`).join(', '));
      case 'grant_requested':
      case 'grant_approved':
      case 'grant_partially_approved':
      case 'grant_denied':
      case 'grant_expired':
      case 'grant_revoked':
      case 'review_requested':
      case 'review_approved':
      case 'review_denied':
      case 'review_expired': {
        const who = e.actor || (e.kind === 'grant_requested' ? e.subject : null)
          || (/^grant_(approved|expired)$/.test(e.kind) ? 'policy' : null);
        const link = (field, value) => el('a', { href: '/?q=' + encodeURIComponent(`${field}:${value}`) }, el('code', {}, value));
        return el('div', { class: 'control' },
          el('div', {},
            who ? el('span', { class: 'actor' }, 'by ', el('strong', {}, who)) : null,
            e.subject && e.subject !== who ? el('span', {}, ' for ', e.subject) : null,
            e.resource ? el('span', {}, ' on ', e.resource) : null,
            e.grant_id ? el('span', {}, ' grant ', link('grant', e.grant_id)) : null,
            e.review_id ? el('span', {}, ' review ', link('review', e.review_id)) : null,
            e.target_session ? el('span', {}, ' in ', el('a', { href: `/sessions/${encodeURIComponent(e.target_session)}` + (e.ref_seq !== undefined ? `#seq=${e.ref_seq}` : '') }, 'session')) : null),
          e.sql ? pre(e.sql, 'sql') : null,
          e.message ? el('div', {}, withMasks(e.message)) : null);
      }
      default: {
        const skip = new Set(['session_id', 'seq', 'time', 'kind', 'direction']);
        const parts = Object.entries(e).filter(([k, v]) => !skip.has(k) && v !== null && v !== '')
          .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`);
        return el('div', {}, withMasks(parts.join('  ')));
      }
    }
  }

  if (body.dataset.page === 'session') sessionPage();
  else searchPage();
})();
