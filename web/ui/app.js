// Holdfast's console: a client of the appliance's JSON API and nothing more, so every action a
// page offers is an API call an admin could script. What the API sends (names from hypervisors
// included) goes into the page as text nodes, never as markup; the CSP forbids inline script.

const session = { current: null };
let events = null;
const listeners = new Set();

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/// Calls the API; resolves to the reply's JSON (null for 204), rejects with an ApiError whose
/// message is the API's own. A 401 outside the login means the session ended: back to the login.
export async function api(method, path, body) {
  const options = { method, headers: {}, credentials: 'same-origin' };
  if (body !== undefined) {
    options.headers['content-type'] = 'application/json';
    options.body = JSON.stringify(body);
  }
  if (method !== 'GET' && session.current) options.headers['x-csrf-token'] = session.current.csrf;
  let resp;
  try {
    resp = await fetch(path, options);
  } catch (e) {
    throw new ApiError(0, `the appliance did not answer (${e.message})`);
  }
  if (resp.status === 204) return null;
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!resp.ok) {
    const message = (data && data.error) || `${resp.status} ${resp.statusText}`;
    if (resp.status === 401 && path !== '/api/login' && session.current) {
      loggedOut('Your session has ended: log in again.');
    }
    throw new ApiError(resp.status, message);
  }
  return data;
}

/// An element: `props` are attributes (`on…` ones are listeners), children are nodes or text.
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'value') el.value = v;
    else if (k === 'checked' || k === 'selected') el[k] = Boolean(v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  add(el, children);
  return el;
}

function add(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
}

let uid = 0;
export function id(prefix) {
  uid += 1;
  return `${prefix}-${uid}`;
}

/// A labelled input with its help and its error line, ids wired for screen readers.
export function field(label, input, help, name) {
  const inputId = input.id || id('f');
  input.id = inputId;
  const errId = `${inputId}-err`;
  const helpId = help ? `${inputId}-help` : null;
  input.setAttribute('aria-describedby', [helpId, errId].filter(Boolean).join(' '));
  return h('div', { class: 'field', 'data-field': name || input.name || '' },
    h('label', { for: inputId }, label),
    input,
    help ? h('small', { id: helpId, class: 'help' }, help) : null,
    h('small', { id: errId, class: 'error', 'aria-live': 'polite' }));
}

/// A checkbox or radio button with its label beside it (the input carries its id).
export function choice(input, label, tag = 'div') {
  if (!input.id) input.id = id('c');
  return h(tag, { class: 'check' }, input, h('label', { for: input.id }, label));
}

/// Shows an API error on the form: under the field it names ("vms[0]: …" names `vms`),
/// or above the buttons.
export function showError(form, err) {
  clearErrors(form);
  const message = err.message || String(err);
  const holder = fieldOf(form, message);
  if (holder) {
    holder.querySelector(':scope > .error').textContent = message;
    const input = holder.querySelector(':scope > input, :scope > select, :scope > textarea');
    if (input) {
      input.setAttribute('aria-invalid', 'true');
      input.focus();
    }
  } else {
    const line = form.querySelector('.form-error');
    line.textContent = message;
    line.hidden = false;
  }
}

/// The field a message names: "full.times[0]: …" is shown under `full.times` if the form has
/// it, else under `full`.
export function fieldOf(form, message) {
  const named = /^([a-z_][a-z0-9_.[\]]*): /.exec(message);
  if (!named) return null;
  let path = named[1].replace(/\[\d+\]/g, '');
  // Shown fields first: a schedule keeps the inputs of every kind, only its own shown.
  const shown = (el) => {
    for (let e = el; e && e !== form && !(e.dataset && e.dataset.step); e = e.parentElement) if (e.hidden) return false;
    return true;
  };
  while (path) {
    const all = [...form.querySelectorAll(`[data-field="${path}"]`)];
    const holder = all.find(shown) || all[0];
    if (holder) return holder;
    path = path.includes('.') ? path.slice(0, path.lastIndexOf('.')) : '';
  }
  return null;
}

export function clearErrors(form) {
  form.querySelectorAll('.error').forEach((e) => { e.textContent = ''; });
  form.querySelectorAll('[aria-invalid]').forEach((e) => e.removeAttribute('aria-invalid'));
  const line = form.querySelector('.form-error');
  if (line) line.hidden = true;
}

/// The line a form shows errors in that name no field.
export function formError() {
  return h('p', { class: 'form-error', role: 'alert', hidden: true });
}

/// A form that calls `submit(values)` and shows the API's refusal where it belongs.
export function form(props, children, submit) {
  const f = h('form', { ...props, novalidate: true }, children, formError());
  f.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors(f);
    const button = f.querySelector('button[type=submit]');
    if (button) button.disabled = true;
    try {
      await submit(f);
    } catch (err) {
      showError(f, err);
    } finally {
      if (button) button.disabled = false;
    }
  });
  return f;
}

export function toast(message) {
  const t = document.getElementById('toast');
  t.textContent = message;
  t.classList.add('shown');
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove('shown'), 4000);
}

export function bytes(n) {
  if (n === null || n === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = Number(n);
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(i === 0 || v >= 100 ? 0 : 1)} ${units[i]}`;
}

export function when(t) {
  if (!t) return '–';
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? t : d.toLocaleString();
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return '–';
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/// A job's state as a badge people read by its words, not its colour alone.
export function stateBadge(state) {
  const tone = { completed: 'ok', failed: 'bad', stopped: 'warn', skipped: 'warn', unknown: 'warn' }[state] || 'busy';
  return h('span', { class: `badge ${tone}` }, state.replaceAll('_', ' '));
}

/// The roles' powers, for leaving out what a user may not do (the API refuses it anyway).
export function may(what) {
  const role = session.current && session.current.role;
  if (what === 'operate') return role === 'admin' || role === 'operator';
  if (what === 'admin') return role === 'admin';
  return Boolean(role);
}

/// Calls `fn(job)` at each job change the appliance streams, until `signal` aborts; and
/// `resync()` whenever the stream (re)connects, since changes made while it was not connected
/// are not replayed: a page fetches again what it shows.
export function onJob(fn, signal, resync) {
  listen('job', fn, signal, resync);
}

/// Calls `fn(sample)` with the appliance's load every two seconds, until `signal` aborts.
export function onSystem(fn, signal) {
  listen('system', fn, signal);
}

/// Calls `fn(sessions)` with the instant-recovery sessions as they change, until `signal`
/// aborts; `resync()` when the stream (re)connects.
export function onRecoveries(fn, signal, resync) {
  listen('recoveries', fn, signal, resync);
}

function listen(kind, fn, signal, resync) {
  // A page already left (it finished loading after the user moved on) listens to nothing.
  if (signal.aborted) return;
  const entry = { kind, fn, resync };
  listeners.add(entry);
  signal.addEventListener('abort', () => listeners.delete(entry));
  if (!events) {
    events = new EventSource('/api/events');
    events.addEventListener('open', () => listeners.forEach((l) => { if (l.resync) l.resync(); }));
    ['job', 'system', 'recoveries'].forEach((k) => events.addEventListener(k, (e) => {
      const value = JSON.parse(e.data);
      listeners.forEach((l) => { if (l.kind === k) l.fn(value); });
    }));
  }
}

export function heading(title, ...actions) {
  return h('div', { class: 'page-head' }, h('h1', {}, title), h('div', { class: 'actions' }, actions));
}

export function table(headers, rows, caption) {
  // On a phone each row is a card whose cells carry their column's name.
  rows.flat(Infinity).forEach((row) => {
    if (!(row instanceof Element)) return;
    [...row.children].forEach((cell, i) => {
      if (typeof headers[i] === 'string' && headers[i]) cell.setAttribute('data-label', headers[i]);
    });
  });
  // The wrapper scrolls sideways on a narrow desktop window: keyboard users reach it too.
  return h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': caption || 'table' },
    h('table', {},
      caption ? h('caption', { class: 'sr-only' }, caption) : null,
      h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col' }, x)))),
      h('tbody', {}, rows)));
}

const pages = [
  { path: 'dashboard', title: 'Dashboard', module: './dashboard.js' },
  { path: 'platforms', title: 'Platforms', module: './platforms.js' },
  { path: 'rules', title: 'Rules', module: './rules.js' },
  { path: 'points', title: 'Restore points', module: './points.js' },
  { path: 'restore', title: 'Restore', module: './restore.js', hidden: true },
  { path: 'recoveries', title: 'Instant recovery', module: './recoveries.js' },
  { path: 'jobs', title: 'Jobs', module: './jobs.js' },
  { path: 'statistics', title: 'Statistics', module: './statistics.js' },
  { path: 'settings', title: 'Settings', module: './settings.js' },
];

let current = null;

async function show() {
  const main = document.getElementById('main');
  const [name, ...params] = location.hash.replace(/^#\/?/, '').split('/');
  const page = pages.find((p) => p.path === name) || pages[0];
  if (current) current.abort();
  current = new AbortController();
  const { signal } = current;
  document.querySelectorAll('#nav a').forEach((a) => {
    if (a.dataset.page === page.path || (page.path === 'restore' && a.dataset.page === 'points')) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  });
  document.title = `${page.title} · Holdfast`;
  const mod = await import(page.module);
  if (signal.aborted) return;
  // Each page draws into its own element: a page left while it still loads draws into one
  // that is no longer shown, never under the next page.
  const view = h('div', { class: 'view' });
  main.replaceChildren(view);
  try {
    await mod.render(view, { params: params.map(decodeURIComponent), signal });
    // When the page's figures are drawn: the benchmark's "first render" (tests/src/bin/console-bench.rs).
    if (!signal.aborted) performance.mark(`hf-rendered:${page.path}`);
  } catch (err) {
    if (err.status !== 401) view.append(h('p', { class: 'form-error', role: 'alert' }, err.message));
  }
}

function chrome() {
  const s = session.current;
  const nav = document.getElementById('nav');
  nav.replaceChildren(h('ul', {}, pages.filter((p) => !p.hidden).map((p) => h('li', {}, h('a', { href: `#/${p.path}`, 'data-page': p.path }, p.title)))));
  nav.hidden = false;
  const user = document.getElementById('user');
  user.replaceChildren(
    h('span', { class: 'who' }, s.user, ' ', h('span', { class: 'role' }, `(${s.role})`)),
    h('button', { type: 'button', class: 'link', onclick: logout }, 'Log out'));
  user.hidden = false;
}

async function logout() {
  try {
    await api('POST', '/api/logout');
  } finally {
    loggedOut('You are logged out.');
  }
}

function loggedOut(message) {
  session.current = null;
  if (events) {
    events.close();
    events = null;
  }
  if (current) current.abort();
  document.getElementById('nav').hidden = true;
  document.getElementById('user').hidden = true;
  login(message);
}

/// The console for a logged-in session; or the password change it must make first.
export function start(s) {
  session.current = s;
  if (s.must_change_password) {
    changePassword();
    return;
  }
  chrome();
  window.onhashchange = show;
  show();
}

async function login(message) {
  window.onhashchange = null;
  document.title = 'Log in · Holdfast';
  const main = document.getElementById('main');
  const user = h('input', { name: 'user', autocomplete: 'username', required: true });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  main.replaceChildren(h('section', { class: 'narrow card' },
    h('h1', {}, 'Log in to Holdfast'),
    message ? h('p', { class: 'notice', role: 'status' }, message) : null,
    form({ 'aria-label': 'Log in' }, [
      field('User name', user),
      field('Password', password),
      h('div', { class: 'buttons' }, h('button', { type: 'submit', class: 'primary' }, 'Log in')),
    ], async () => {
      const s = await api('POST', '/api/login', { user: user.value, password: password.value });
      start(s);
    })));
  user.focus();
}

function changePassword() {
  document.title = 'Change your password · Holdfast';
  const main = document.getElementById('main');
  const old = h('input', { name: 'old', type: 'password', autocomplete: 'current-password' });
  const next = h('input', { name: 'new', type: 'password', autocomplete: 'new-password' });
  const again = h('input', { name: 'again', type: 'password', autocomplete: 'new-password' });
  main.replaceChildren(h('section', { class: 'narrow card' },
    h('h1', {}, 'Change your password'),
    h('p', {}, `Welcome, ${session.current.user}. Choose your own password before you go on.`),
    form({ 'aria-label': 'Change your password' }, [
      field('Current password', old),
      field('New password', next, 'At least 10 characters.'),
      field('New password again', again),
      h('div', { class: 'buttons' }, h('button', { type: 'submit', class: 'primary' }, 'Change password')),
    ], async () => {
      if (next.value !== again.value) throw new ApiError(400, 'again: the two new passwords differ');
      await api('POST', '/api/password', { old: old.value, new: next.value });
      toast('Password changed.');
      start({ ...session.current, must_change_password: false });
    })));
  old.focus();
}

async function boot() {
  try {
    start(await api('GET', '/api/session'));
  } catch (err) {
    login(err.status === 401 ? null : err.message);
  }
}

boot();
