// Settings: users, API tokens, bandwidth windows, alert mail, storage targets, the audit log and
// the configuration file, one section each (#/settings/<section>). Every section is a client of
// the API's own routes; a control the API would refuse the user's role is left out, so an
// auditor sees what it may read and nothing that changes anything.
import {
  api, h, heading, field, form, may, table, toast, bytes, when, showError, clearErrors, ApiError, id, choice,
} from './app.js';

const DAYS = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'];
const DAY_NAMES = {
  mon: 'Monday', tue: 'Tuesday', wed: 'Wednesday', thu: 'Thursday', fri: 'Friday', sat: 'Saturday', sun: 'Sunday',
};
const short = (d) => DAY_NAMES[d] ? DAY_NAMES[d].slice(0, 3) : d;

/// Admins and auditors read the audit log; operators do not.
const mayAudit = () => may('admin') || !may('operate');

const SECTIONS = [
  { path: 'users', title: 'Users', show: () => may('admin'), who: 'admins', draw: users },
  { path: 'tokens', title: 'API tokens', show: () => true, draw: tokens },
  { path: 'limits', title: 'Jobs at once', show: () => true, draw: limits },
  { path: 'bandwidth', title: 'Bandwidth', show: () => true, draw: bandwidth },
  { path: 'alerts', title: 'Alert mail', show: () => may('admin'), who: 'admins', draw: alerts },
  { path: 'storage', title: 'Storage targets', show: () => true, draw: storage },
  { path: 'audit', title: 'Audit log', show: mayAudit, who: 'admins and auditors', draw: audit },
  { path: 'configuration', title: 'Configuration', show: () => may('admin'), who: 'admins', draw: configuration },
];

/// A section's head: its title (the section's h2) and its actions.
function sectionHead(title, ...actions) {
  return h('div', { class: 'page-head' }, h('h2', { id: 'settings-h' }, title), h('div', { class: 'actions' }, actions));
}

/// Puts a section's content in its box (nulls left out).
function fill(box, ...children) {
  box.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

/// After a change redraws a section, the keyboard goes to its heading (or `target`), not to the
/// page's top.
function settle(box, target) {
  const el = (target && box.querySelector(target)) || box.querySelector('#settings-h');
  if (!el) return;
  el.setAttribute('tabindex', '-1');
  el.focus();
}

/// A row's buttons: a cell holding a flex box (a flex cell would leave the table's grid).
function rowActions(...children) {
  return h('td', {}, h('div', { class: 'row-actions' }, children));
}

function buttons(...children) {
  return h('div', { class: 'buttons' }, children);
}

function failure(message) {
  return h('p', { class: 'form-error', role: 'alert' }, message);
}

/// A number input's value for the API: null when empty, so the API names the field.
function num(input) {
  return input.value.trim() === '' ? null : Number(input.value);
}

/// A checkbox in the form's field layout: the box before its label, help and error below.
function checkField(label, input, help, name) {
  const f = field(label, input, help, name);
  f.classList.add('checkbox');
  return f;
}

// ---------------------------------------------------------------------------------------------
// Users (admins)

const ROLES = [
  ['admin', 'Admin: everything'],
  ['operator', 'Operator: backups, restores, rules'],
  ['auditor', 'Auditor: reads everything, changes nothing'],
];

function userForm(done) {
  const name = h('input', { name: 'name', autocomplete: 'off', autocapitalize: 'none', spellcheck: 'false', required: true });
  const role = h('select', { name: 'role' }, ROLES.map(([v, t]) => h('option', { value: v, selected: v === 'operator' }, t)));
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'new-password', required: true });
  return form({ class: 'card', 'aria-label': 'Add a user' }, [
    h('h3', {}, 'Add a user'),
    h('div', { class: 'form-grid' },
      field('User name', name, 'Letters, digits and . _ - @ (up to 64).'),
      field('Role', role),
      field('Initial password', password, 'At least 10 characters. The user chooses their own at the first login.')),
    buttons(h('button', { type: 'submit', class: 'primary' }, 'Add user')),
  ], async () => {
    const u = await api('POST', '/api/users', { name: name.value.trim(), role: role.value, password: password.value });
    done(u);
  });
}

function resetForm(u, done) {
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'new-password', required: true });
  return form({ class: 'card', 'aria-label': `New password for ${u.name}` }, [
    h('h3', {}, `New password for ${u.name}`),
    field('New password', password,
      `At least 10 characters. ${u.name} must change it at the next login; this also unlocks the user and ends their sessions.`),
    buttons(
      h('button', { type: 'submit', class: 'primary' }, 'Set password'),
      h('button', { type: 'button', onclick: () => done(false) }, 'Cancel')),
  ], async () => {
    await api('POST', `/api/users/${encodeURIComponent(u.name)}/password`, { password: password.value });
    done(true);
  });
}

function locked(u) {
  return Boolean(u.locked_until) && new Date(u.locked_until).getTime() > Date.now();
}

async function users(box) {
  const [list, me] = await Promise.all([api('GET', '/api/users'), api('GET', '/api/session')]);
  const slot = h('div');
  const reload = async () => {
    await users(box);
    settle(box);
  };
  const act = async (what, call, done) => {
    try {
      await call();
      toast(done);
      await reload();
    } catch (err) {
      slot.replaceChildren(failure(`${what}: ${err.message}`));
    }
  };
  const reset = (u) => {
    const f = resetForm(u, (saved) => {
      slot.replaceChildren();
      if (!saved) {
        settle(box);
        return;
      }
      toast(`${u.name} has a new password, to be changed at the next login.`);
      reload();
    });
    slot.replaceChildren(f);
    f.querySelector('input').focus();
  };
  const remove = (u) => {
    if (!window.confirm(`Delete user ${u.name}? Their sessions end and their API tokens stop working.`)) return;
    act(`Deleting ${u.name}`, () => api('DELETE', `/api/users/${encodeURIComponent(u.name)}`), `User ${u.name} deleted.`);
  };
  const unlock = (u) => act(`Unlocking ${u.name}`,
    () => api('POST', `/api/users/${encodeURIComponent(u.name)}/unlock`), `${u.name} can log in again.`);
  const state = (u) => [
    locked(u) ? h('span', { class: 'badge bad' }, `locked until ${when(u.locked_until)}`) : null,
    u.must_change_password ? h('span', { class: 'badge warn' }, 'must change password') : null,
    !locked(u) && !u.must_change_password ? h('span', { class: 'badge ok' }, 'active') : null,
  ];
  const adding = userForm((u) => {
    toast(`User ${u.name} added as ${u.role}: they choose their password at the first login.`);
    reload();
  });
  fill(box,
    sectionHead('Users'),
    h('p', { class: 'muted' }, 'Five wrong passwords lock a user for 15 minutes, unless you unlock them sooner.'),
    slot,
    table(['User', 'Role', 'State', h('span', { class: 'sr-only' }, 'Actions')], list.map((u) => h('tr', { 'data-user': u.name },
      h('td', {}, u.name, u.name === me.user ? h('span', { class: 'muted' }, ' (you)') : null),
      h('td', {}, u.role),
      h('td', { class: 'badges' }, state(u)),
      rowActions(u.name === me.user ? null : [
        locked(u) ? h('button', { type: 'button', onclick: () => unlock(u), 'aria-label': `Unlock ${u.name}` }, 'Unlock') : null,
        h('button', { type: 'button', onclick: () => reset(u), 'aria-label': `Reset password of ${u.name}` }, 'Reset password'),
        h('button', { type: 'button', class: 'danger', onclick: () => remove(u), 'aria-label': `Delete ${u.name}` }, 'Delete'),
      ]))), 'Users'),
    adding,
  );
}

// ---------------------------------------------------------------------------------------------
// API tokens (each user's own)

async function tokens(box) {
  const list = h('div');
  const once = h('div');
  let shownId = null;
  const drawList = async () => {
    const mine = await api('GET', '/api/tokens');
    list.replaceChildren(mine.length === 0 ? h('p', { class: 'empty' }, 'You have no API token.')
      : table(['Name', 'Created', may('operate') ? h('span', { class: 'sr-only' }, 'Actions') : null].filter(Boolean),
        mine.map((t) => h('tr', { 'data-token': t.id },
          h('td', {}, t.name),
          h('td', {}, when(t.created)),
          may('operate') ? rowActions(
            h('button', { type: 'button', class: 'danger', onclick: () => revoke(t), 'aria-label': `Revoke ${t.name}` }, 'Revoke')) : null)),
        'Your API tokens'));
  };
  const revoke = async (t) => {
    if (!window.confirm(`Revoke token ${t.name}? Whatever uses it is refused from now on.`)) return;
    try {
      await api('DELETE', `/api/tokens/${t.id}`);
      toast(`Token ${t.name} revoked.`);
      if (shownId === t.id) once.replaceChildren();
      await drawList();
      settle(box);
    } catch (err) {
      list.prepend(failure(`Revoking ${t.name}: ${err.message}`));
    }
  };
  const show = (t) => {
    shownId = t.id;
    const hid = id('token-h');
    const value = h('input', { name: 'new-token', class: 'mono', readonly: true, value: t.token, spellcheck: 'false', autocomplete: 'off' });
    const copy = async () => {
      try {
        await navigator.clipboard.writeText(t.token);
        toast('Token copied.');
      } catch {
        value.select();
        toast('The browser did not let the page copy: press Ctrl+C (⌘C).');
      }
    };
    once.replaceChildren(h('section', { class: 'card once', 'aria-labelledby': hid },
      h('h3', { id: hid }, `Your new token “${t.name}”`),
      h('p', { role: 'status' }, 'Copy it now: it is shown only this once. Holdfast keeps only a hash of it.'),
      field('Token', value, 'Scripts send it as the header Authorization: Bearer followed by the token.'),
      buttons(
        h('button', { type: 'button', class: 'primary', onclick: copy }, 'Copy token'),
        h('button', { type: 'button', onclick: () => { shownId = null; once.replaceChildren(); settle(box); } }, 'Done: hide it'))));
    value.focus();
    value.select();
  };
  let creating = null;
  if (may('operate')) {
    const name = h('input', { name: 'name', autocomplete: 'off' });
    creating = form({ class: 'card', 'aria-label': 'Create an API token' }, [
      h('h3', {}, 'Create an API token'),
      field('Name', name, 'What it is for: the script or machine that uses it.'),
      buttons(h('button', { type: 'submit', class: 'primary' }, 'Create token')),
    ], async () => {
      const t = await api('POST', '/api/tokens', { name: name.value.trim() });
      name.value = '';
      await drawList();
      show(t);
    });
  }
  fill(box,
    sectionHead('API tokens'),
    h('p', { class: 'muted' }, 'Tokens let scripts and the holdfast client use the API as you, with your role.'),
    once,
    list,
    creating || h('p', { class: 'muted' }, 'Creating and revoking tokens is for operators and admins.'),
  );
  await drawList();
}

// ---------------------------------------------------------------------------------------------
// Bandwidth windows

function minutesOf(hhmm) {
  const m = /^(\d{1,2}):(\d{2})$/.exec(hhmm || '');
  if (!m || Number(m[1]) > 23 || Number(m[2]) > 59) return null;
  return Number(m[1]) * 60 + Number(m[2]);
}

/// The lowest limit in force at some time of each hour of the week: cells[day][hour], null for
/// none. A window whose `to` is before its `from` runs into the next day, as the API says.
function weekCells(windows) {
  const cells = DAYS.map(() => Array(24).fill(null));
  const mark = (day, from, to, limit) => {
    for (let hour = Math.floor(from / 60); hour * 60 < to && hour < 24; hour += 1) {
      const c = cells[day][hour];
      cells[day][hour] = c === null ? limit : Math.min(c, limit);
    }
  };
  windows.forEach((w) => {
    const from = minutesOf(w.from);
    const to = minutesOf(w.to);
    if (from === null || to === null || from === to) return;
    w.days.map((d) => DAYS.indexOf(d)).filter((d) => d >= 0).forEach((d) => {
      if (from < to) {
        mark(d, from, to, w.mb_per_second);
      } else {
        mark(d, from, 24 * 60, w.mb_per_second);
        if (to > 0) mark((d + 1) % 7, 0, to, w.mb_per_second);
      }
    });
  });
  return cells;
}

function limitText(mb) {
  return mb === 0 ? 'paused (0 MB/s)' : `${mb} MB/s`;
}

/// The week as a table: days as rows and hours as columns (`byHour` turns it for a phone).
function gridTable(cells, byHour) {
  const hours = Array.from({ length: 24 }, (_, i) => String(i).padStart(2, '0'));
  const cell = (limit, day, hour) => {
    if (limit === null) {
      return h('td', { class: 'bw-none', 'data-cell': `${day}-${hour}` },
        h('span', { 'aria-hidden': 'true' }, '–'), h('span', { class: 'sr-only' }, 'no limit'));
    }
    return h('td', { class: limit === 0 ? 'bw-paused' : 'bw-limit', 'data-cell': `${day}-${hour}` },
      String(limit), h('span', { class: 'sr-only' }, limit === 0 ? ' MB/s: paused' : ' MB/s'));
  };
  const dayHead = (d) => h('abbr', { title: DAY_NAMES[d] }, short(d));
  const hourHead = (x) => h('span', {}, x, h('span', { class: 'sr-only' }, ':00'));
  const corner = h('th', { scope: 'col' }, h('span', { class: 'sr-only' }, byHour ? 'Hour' : 'Day'));
  const head = byHour ? DAYS.map((d) => h('th', { scope: 'col' }, dayHead(d))) : hours.map((x) => h('th', { scope: 'col' }, hourHead(x)));
  const rows = byHour
    ? hours.map((x, hour) => h('tr', {}, h('th', { scope: 'row' }, hourHead(x)), DAYS.map((d, i) => cell(cells[i][hour], d, x))))
    : DAYS.map((d, i) => h('tr', {}, h('th', { scope: 'row' }, dayHead(d)), cells[i].map((limit, hour) => cell(limit, d, hours[hour]))));
  const caption = 'Bandwidth limit by day and hour, in MB/s';
  return h('div', { class: `grid-wrap ${byHour ? 'by-hour' : 'by-day'}`, tabindex: 0, role: 'region', 'aria-label': caption },
    h('table', {}, h('caption', { class: 'sr-only' }, caption), h('thead', {}, h('tr', {}, corner, head)), h('tbody', {}, rows)));
}

/// The windows in force, hour by hour: days across on a wide screen, down on a phone (CSS shows
/// one of the two).
function weekGrid(windows) {
  const cells = weekCells(windows);
  return h('div', { class: 'bw-grid' },
    gridTable(cells, false),
    gridTable(cells, true),
    h('p', { class: 'small muted legend' },
      h('span', { class: 'key bw-limit' }, '50'), ' a limit in MB/s, the lowest in force during that hour · ',
      h('span', { class: 'key bw-paused' }, '0'), ' backups paused · ',
      h('span', { class: 'key bw-none' }, '–'), ' no limit. Times are the appliance\'s local time.'));
}

/// One window of the editing form; `n` counts from 1.
function windowRow(w, n, onRemove) {
  const legend = h('legend', {}, `Window ${n}`);
  const dayBoxes = DAYS.map((d) => h('input', { type: 'checkbox', name: 'days', value: d, checked: w.days.includes(d) }));
  const daysLegend = h('legend', {}, 'Days');
  const days = h('div', { class: 'field', 'data-field': 'days' },
    h('fieldset', { class: 'days' }, daysLegend,
      dayBoxes.map((b, i) => h('label', { class: 'day' }, b, h('abbr', { title: DAY_NAMES[DAYS[i]] }, short(DAYS[i]))))),
    h('small', { class: 'error', 'aria-live': 'polite' }));
  const from = h('input', { name: 'from', value: w.from, placeholder: 'HH:MM', autocomplete: 'off', size: 6 });
  const to = h('input', { name: 'to', value: w.to, placeholder: 'HH:MM', autocomplete: 'off', size: 6 });
  const mb = h('input', { name: 'mb_per_second', type: 'number', min: 0, step: 'any', value: String(w.mb_per_second), size: 6 });
  const remove = h('button', { type: 'button', class: 'danger', onclick: () => onRemove(row) }, 'Remove');
  const el = h('fieldset', { class: 'window' }, legend,
    days,
    h('div', { class: 'times' },
      field('From', from, null, 'from'),
      field('To', to, 'Before From: runs past midnight.', 'to'),
      field('Limit (MB/s)', mb, '0 pauses backups.', 'mb_per_second')),
    buttons(remove));
  const row = {
    el,
    value: () => ({
      days: DAYS.filter((_, i) => dayBoxes[i].checked),
      from: from.value.trim(),
      to: to.value.trim(),
      mb_per_second: num(mb),
    }),
    number: (k) => {
      legend.textContent = `Window ${k}`;
      remove.setAttribute('aria-label', `Remove window ${k}`);
    },
  };
  row.number(n);
  return row;
}

function windowsForm(windows, saved) {
  const list = h('div', { class: 'windows' });
  const none = h('p', { class: 'empty' }, 'No window: backups run at full speed at all times. Saving an empty list removes every window.');
  let rows = [];
  const renumber = () => {
    rows.forEach((r, i) => r.number(i + 1));
    none.hidden = rows.length > 0;
  };
  const remove = (row) => {
    rows = rows.filter((r) => r !== row);
    row.el.remove();
    renumber();
    addButton.focus();
  };
  const addRow = (w) => {
    const row = windowRow(w, rows.length + 1, remove);
    rows.push(row);
    list.append(row.el);
    renumber();
    return row;
  };
  const addButton = h('button', { type: 'button', onclick: () => {
    const row = addRow({ days: ['mon', 'tue', 'wed', 'thu', 'fri'], from: '08:00', to: '18:00', mb_per_second: 50 });
    row.el.querySelector('input').focus();
  } }, 'Add window');
  windows.forEach(addRow);
  renumber();
  const f = form({ class: 'card', 'aria-label': 'Bandwidth windows' }, [
    h('h3', {}, 'Windows'),
    h('p', { class: 'muted' }, 'In a window all running backups together read at most the limit; where windows overlap the lowest applies; outside every window there is no limit.'),
    none,
    list,
    buttons(addButton, h('button', { type: 'submit', class: 'primary' }, 'Save windows')),
  ], async () => {
    const body = rows.map((r) => r.value());
    try {
      await api('PUT', '/api/bandwidth', body);
    } catch (err) {
      // The API names the window and field ("[1].from: …"): shown under that window's field.
      const m = /^\[(\d+)\]\.([a-z_]+)/.exec(err.message);
      const holder = m && rows[Number(m[1])] && rows[Number(m[1])].el.querySelector(`.field[data-field="${m[2]}"]`);
      if (!holder) throw err;
      holder.querySelector('.error').textContent = err.message;
      const input = holder.querySelector('input');
      input.setAttribute('aria-invalid', 'true');
      input.focus();
      return;
    }
    toast(body.length ? 'Bandwidth windows saved: running backups follow within a second.' : 'Every bandwidth window removed.');
    saved();
  });
  return f;
}

async function bandwidth(box) {
  const windows = await api('GET', '/api/bandwidth');
  const reload = async () => {
    await bandwidth(box);
    settle(box, '#bw-week');
  };
  fill(box,
    sectionHead('Bandwidth'),
    h('section', { class: 'card', 'aria-labelledby': 'bw-week' },
      h('h3', { id: 'bw-week' }, 'The week at a glance'),
      weekGrid(windows)),
    may('admin') ? windowsForm(windows, reload)
      : h('section', { class: 'card', 'aria-labelledby': 'bw-list' },
        h('h3', { id: 'bw-list' }, 'Windows'),
        windows.length === 0 ? h('p', { class: 'empty' }, 'No window: backups run at full speed at all times.')
          : table(['Days', 'From', 'To', 'Limit'], windows.map((w) => h('tr', {},
            h('td', {}, w.days.map(short).join(', ')), h('td', {}, w.from), h('td', {}, w.to), h('td', {}, limitText(w.mb_per_second)))),
          'Bandwidth windows'),
        h('p', { class: 'muted' }, 'Admins change the windows.')),
  );
}

// ---------------------------------------------------------------------------------------------
// Jobs at once (every role reads; admins change)

async function limits(box) {
  const l = await api('GET', '/api/limits');
  const all = h('input', { name: 'max_jobs', type: 'number', min: 1, max: 256, value: l.max_jobs });
  const perHost = h('input', { name: 'max_jobs_per_host', type: 'number', min: 1, max: 256, value: l.max_jobs_per_host });
  const words = `At most ${l.max_jobs} backups and restores run at once, at most ${l.max_jobs_per_host} against one platform; the others wait their turn, in the order they came.`;
  fill(box,
    sectionHead('Jobs at once'),
    h('section', { class: 'card', 'aria-labelledby': 'limits-h' },
      h('h3', { id: 'limits-h' }, 'Concurrency limits'),
      h('p', { 'data-limits': '' }, words),
      may('admin') ? form({ 'aria-label': 'Concurrency limits' }, [
        field('Jobs at once, in all', all, '1-256. Raising it lets waiting jobs start at once.'),
        field('Jobs at once against one platform', perHost, '1-256. Keeps one host from being read by too many backups together.'),
        h('div', { class: 'buttons' }, h('button', { type: 'submit', class: 'primary' }, 'Save limits')),
      ], async () => {
        await api('PUT', '/api/limits', { max_jobs: Number(all.value), max_jobs_per_host: Number(perHost.value) });
        toast('Limits saved: waiting jobs follow them now.');
        await limits(box);
        settle(box, '#limits-h');
      }) : h('p', { class: 'muted' }, 'Admins change the limits.')));
}

// ---------------------------------------------------------------------------------------------
// Alert mail (admins)

const SECURITY = [
  ['starttls', 'STARTTLS'],
  ['tls', 'TLS (SMTPS)'],
  ['none', 'None (trusted relay)'],
];

async function alerts(box) {
  const saved = await api('GET', '/api/alerts');
  const a = saved || {
    enabled: true, smtp_host: '', smtp_port: 587, security: 'starttls', username: null, has_password: false,
    from: '', to: [], ca_pem: null, storage_full_percent: 90, repeat_minutes: 60,
  };
  const enabled = h('input', { type: 'checkbox', name: 'enabled', checked: a.enabled });
  const host = h('input', { name: 'smtp_host', value: a.smtp_host, autocomplete: 'off', placeholder: 'mail.example.com' });
  const port = h('input', { name: 'smtp_port', type: 'number', min: 1, max: 65535, value: String(a.smtp_port) });
  const security = h('select', { name: 'security' }, SECURITY.map(([v, t]) => h('option', { value: v, selected: a.security === v }, t)));
  const username = h('input', { name: 'username', value: a.username || '', autocomplete: 'off' });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'new-password' });
  const forget = h('input', { type: 'checkbox', id: 'forget-smtp-password' });
  const from = h('input', { name: 'from', inputmode: 'email', value: a.from, autocomplete: 'off', placeholder: 'holdfast@example.com' });
  const to = h('input', { name: 'to', inputmode: 'email', value: a.to.join(', '), autocomplete: 'off', placeholder: 'ops@example.com, oncall@example.com' });
  const ca = h('textarea', { name: 'ca_pem', rows: 4, class: 'mono', spellcheck: 'false', placeholder: '-----BEGIN CERTIFICATE-----' });
  ca.value = a.ca_pem || '';
  const full = h('input', { name: 'storage_full_percent', type: 'number', min: 1, max: 100, value: String(a.storage_full_percent) });
  const repeat = h('input', { name: 'repeat_minutes', type: 'number', min: 0, value: String(a.repeat_minutes) });
  const result = h('p', { class: 'notice', role: 'status', hidden: true });
  const test = h('button', { type: 'button' }, 'Send test mail');
  const f = form({ class: 'card', 'aria-label': 'Alert mail settings' }, [
    checkField('Send alert mails', enabled,
      'When a backup fails, when a VM\'s backup succeeds again after failures, and when a storage target fills up or does not open.'),
    h('div', { class: 'form-grid' },
      field('SMTP server', host, null, 'smtp_host'),
      field('Port', port, null, 'smtp_port'),
      field('Security', security, 'STARTTLS: usually port 587; TLS: 465; none only for a relay on a trusted network.'),
      field('User name (optional)', username),
      field('Password', password, a.has_password ? 'A password is stored: leave empty to keep it.' : 'Only if the server wants one.'),
      a.has_password ? choice(forget, 'Remove the stored password') : null,
      field('From', from, 'The sender address.'),
      field('To', to, 'One address or several, separated by commas.', 'to'),
      field('Storage full at (%)', full, 'Mail when a target\'s filesystem is at least this full.', 'storage_full_percent'),
      field('Repeat after (minutes)', repeat, 'The same alert is mailed at most once in this time.', 'repeat_minutes')),
    field('CA certificate (optional, PEM)', ca, 'For an internal mail server whose certificate no public CA signed.', 'ca_pem'),
    buttons(
      h('button', { type: 'submit', class: 'primary' }, 'Save'),
      test,
      h('span', { class: 'small muted' }, 'The test mail uses the saved settings.')),
    result,
  ], async () => {
    const body = {
      enabled: enabled.checked,
      smtp_host: host.value.trim(),
      smtp_port: num(port),
      security: security.value,
      username: username.value.trim() || null,
      from: from.value.trim(),
      to: to.value.split(',').map((x) => x.trim()).filter(Boolean),
      ca_pem: ca.value.trim() ? ca.value : null,
      storage_full_percent: num(full),
      repeat_minutes: num(repeat),
    };
    if (password.value) body.password = password.value;
    else if (forget.checked) body.password = '';
    result.hidden = true;
    await api('PUT', '/api/alerts', body);
    toast('Alert settings saved.');
    await alerts(box);
    settle(box);
  });
  test.addEventListener('click', async () => {
    clearErrors(f);
    result.hidden = true;
    test.disabled = true;
    try {
      await api('POST', '/api/alerts/test');
      result.textContent = `Test mail sent to ${(saved ? saved.to : []).join(', ')}: check the inbox.`;
      result.hidden = false;
    } catch (err) {
      showError(f, err);
    } finally {
      test.disabled = false;
    }
  });
  fill(box,
    sectionHead('Alert mail'),
    saved ? null : h('p', { class: 'notice' }, 'No alert mail is set up yet: nobody is told when a backup fails.'),
    f,
  );
}

// ---------------------------------------------------------------------------------------------
// Storage targets

function storageForm(done) {
  const name = h('input', { name: 'name', autocomplete: 'off', required: true });
  const path = h('input', { name: 'path', autocomplete: 'off', placeholder: '/mnt/nas1/holdfast', required: true, spellcheck: 'false' });
  const passphrase = h('input', { name: 'passphrase', type: 'password', autocomplete: 'new-password' });
  const zstd = h('input', { name: 'zstd_level', type: 'number', min: 1, max: 19, placeholder: '3' });
  const modeName = id('mode');
  const modes = [
    ['new', 'Make a new store', 'in a missing or empty directory'],
    ['adopt', 'Adopt an existing store', 'another appliance\'s, or one moved here: its points join at once'],
  ].map(([v, t, more]) => ({ v, input: h('input', { type: 'radio', name: modeName, value: v, checked: v === 'new' }), t, more }));
  const passField = field('Passphrase (optional)', passphrase, ' ', 'passphrase');
  const passHelp = passField.querySelector('.help');
  const zstdField = field('zstd level (optional)', zstd, '1 to 19; 3 when left empty. Fixed for the new store.', 'zstd_level');
  const mode = () => modes.find((m) => m.input.checked).v;
  const switchMode = () => {
    const adopt = mode() === 'adopt';
    zstdField.hidden = adopt;
    passHelp.textContent = adopt
      ? 'Only for an encrypted store: its own passphrase.'
      : 'Encrypts the new store (10 characters or more). Lose it and the data is gone: keep it somewhere safe.';
  };
  modes.forEach((m) => m.input.addEventListener('change', switchMode));
  switchMode();
  return form({ class: 'card', 'aria-label': 'Add a storage target' }, [
    h('h3', {}, 'Add a storage target'),
    h('fieldset', { class: 'choice' }, h('legend', {}, 'The directory'),
      modes.map((m) => h('label', {}, m.input, h('span', {}, h('strong', {}, m.t), h('span', { class: 'muted' }, ` – ${m.more}`))))),
    h('div', { class: 'form-grid' },
      field('Name', name, 'How rules and points name it.'),
      field('Directory', path, 'An absolute path: another disk, a SAN volume, a mounted NAS share.', 'path'),
      passField,
      zstdField),
    buttons(h('button', { type: 'submit', class: 'primary' }, 'Add target')),
  ], async () => {
    const body = { name: name.value.trim(), path: path.value.trim() };
    if (passphrase.value) body.passphrase = passphrase.value;
    if (mode() === 'new' && zstd.value.trim() !== '') body.zstd_level = num(zstd);
    done(await api('POST', '/api/storage', body));
  });
}

async function storage(box) {
  const targets = await api('GET', '/api/storage');
  const slot = h('div');
  const reload = async () => {
    await storage(box);
    settle(box);
  };
  const remove = async (t) => {
    if (!window.confirm(`Remove storage target ${t.name}? Its points leave the catalog; its files stay in ${t.path}, to be adopted again.`)) return;
    try {
      await api('DELETE', `/api/storage/${t.id}`);
      toast(`Storage target ${t.name} removed; its files are kept.`);
      await reload();
    } catch (err) {
      slot.replaceChildren(failure(err.message));
    }
  };
  const check = async (t, kind) => {
    try {
      await api('POST', `/api/storage/${t.id}/${kind}`, {});
      toast(kind === 'verify' ? `Verifying ${t.name}: the result shows under Health.` : `Collecting ${t.name}'s garbage.`);
      await reload();
    } catch (err) {
      slot.replaceChildren(failure(err.message));
    }
  };
  // A running check's cell is looked at again until it ends: only the Health cells change, so
  // what an admin types in the form below stays. One timer per section.
  clearTimeout(box.healthTimer);
  const follow = async () => {
    if (!box.isConnected) return;
    const fresh = await api('GET', '/api/storage').catch(() => null);
    if (!fresh || !box.isConnected) return;
    fresh.forEach((t) => {
      const cell = box.querySelector(`tr[data-target='${t.id}'] td.health`);
      if (cell) cell.replaceChildren(health(t));
    });
    if (fresh.some((t) => t.health.some((c) => c.running))) box.healthTimer = setTimeout(follow, 1500);
  };
  if (targets.some((t) => t.health.some((c) => c.running))) box.healthTimer = setTimeout(follow, 1500);
  const health = (t) => (t.health.length === 0 ? h('span', { class: 'muted small' }, 'never checked')
    : h('ul', { class: 'plain small' }, t.health.map((c) => h('li', { 'data-check': c.kind },
      h('span', { class: `badge ${c.running ? 'busy' : c.ok ? 'ok' : 'bad'}` }, `${c.kind === 'gc' ? 'garbage collection' : 'verify'}: ${c.running ? 'running' : c.ok ? 'sound' : 'problems'}`),
      ' ', c.running ? `since ${when(c.started)}` : when(c.finished), h('div', { class: 'wrap' }, c.summary)))));
  const used = (t) => (t.used_percent === null || t.used_percent === undefined ? '–' : h('span', { class: 'nowrap' },
    h('meter', { min: 0, max: 100, low: 80, high: 90, optimum: 0, value: t.used_percent, 'aria-label': `${t.name} used` }),
    ` ${t.used_percent.toFixed(0)} %`));
  fill(box,
    sectionHead('Storage targets'),
    h('p', { class: 'muted' }, 'Where backups go. Target 1 is the appliance\'s own store; rules and backups name the target they write into.'),
    slot,
    table(['Target', 'State', 'Used', 'Free', 'Total', 'Points', 'Stored', 'Encrypted', 'Health', may('admin') ? h('span', { class: 'sr-only' }, 'Actions') : null].filter(Boolean),
      targets.map((t) => h('tr', { 'data-target': t.id },
        h('td', { class: 'wrap' }, t.name, h('div', { class: 'muted small' }, t.path)),
        h('td', { class: 'wrap' }, t.available ? h('span', { class: 'badge ok' }, 'available')
          : [h('span', { class: 'badge bad' }, 'unavailable'), t.error ? h('div', { class: 'small error-text' }, t.error) : null]),
        h('td', {}, used(t)),
        h('td', { class: 'nowrap' }, bytes(t.free_bytes)),
        h('td', { class: 'nowrap' }, bytes(t.total_bytes)),
        h('td', {}, String(t.points)),
        h('td', { class: 'nowrap' }, bytes(t.stored_bytes)),
        h('td', {}, t.encrypted ? 'yes' : 'no'),
        h('td', { class: 'health' }, health(t)),
        may('admin') ? rowActions(
          t.available ? h('button', { type: 'button', onclick: () => check(t, 'verify'), 'aria-label': `Verify ${t.name}` }, 'Verify') : null,
          t.available ? h('button', { type: 'button', onclick: () => check(t, 'gc'), 'aria-label': `Collect garbage of ${t.name}` }, 'Collect garbage') : null,
          t.id === 1 ? h('span', { class: 'muted small' }, 'own store')
            : h('button', { type: 'button', class: 'danger', onclick: () => remove(t), 'aria-label': `Remove ${t.name}` }, 'Remove')) : null)),
      'Storage targets'),
    may('admin') ? storageForm((t) => {
      toast(t.points ? `Storage target ${t.name} added: its store and ${t.points} points adopted.` : `Storage target ${t.name} added.`);
      reload();
    }) : h('p', { class: 'muted' }, 'Admins add and remove storage targets.'),
  );
}

// ---------------------------------------------------------------------------------------------
// Audit log (admins, auditors)

async function audit(box) {
  // The newest page first; older pages on demand (the appliance answers a page at a time).
  const PAGE = 1000;
  const rows = await api('GET', `/api/audit?limit=${PAGE}`);
  let more = rows.length === PAGE;
  const distinct = (key) => [...new Set(rows.map((r) => r[key]))].sort();
  const listId = id('actions');
  const user = h('select', { name: 'user' });
  const actions = h('datalist', { id: listId });
  const fillChoices = () => {
    const was = user.value;
    user.replaceChildren(h('option', { value: '' }, 'any user'), ...distinct('user').map((u) => h('option', { value: u, selected: u === was }, u)));
    actions.replaceChildren(...distinct('action').map((x) => h('option', { value: x })));
  };
  const action = h('input', { name: 'action', type: 'search', autocomplete: 'off', list: listId });
  const text = h('input', { name: 'text', type: 'search', autocomplete: 'off' });
  const count = h('p', { class: 'small muted', role: 'status' });
  const body = h('div');
  // Reading older entries changes nothing; the button is there only while there are some.
  const olderBox = h('div');
  const older = h('button', { type: 'button' }, 'Show older entries');
  const draw = () => {
    const a = action.value.trim().toLowerCase();
    const t = text.value.trim().toLowerCase();
    const shown = rows.filter((r) => (!user.value || r.user === user.value)
      && (!a || r.action.toLowerCase().includes(a))
      && (!t || [when(r.time), r.time, r.user, r.action, r.detail].some((x) => x.toLowerCase().includes(t))));
    count.textContent = `${shown.length} of ${rows.length} entries loaded${more ? ' (older ones on demand)' : ''}, newest first.`;
    olderBox.replaceChildren(...(more ? [older] : []));
    body.replaceChildren(shown.length === 0 ? h('p', { class: 'empty' }, 'No entry matches.')
      : table(['Time', 'User', 'Action', 'Detail'], shown.map((r) => h('tr', {},
        h('td', { class: 'nowrap' }, when(r.time)), h('td', {}, r.user), h('td', {}, r.action), h('td', { class: 'wrap' }, r.detail))),
      'Audit log'));
  };
  older.addEventListener('click', async () => {
    older.disabled = true;
    try {
      const page = await api('GET', `/api/audit?limit=${PAGE}&before=${rows[rows.length - 1].id}`);
      rows.push(...page);
      more = page.length === PAGE;
      fillChoices();
      draw();
    } finally {
      older.disabled = false;
    }
  });
  user.addEventListener('change', draw);
  action.addEventListener('input', draw);
  text.addEventListener('input', draw);
  fillChoices();
  fill(box,
    sectionHead('Audit log'),
    h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter the audit log', onsubmit: (e) => e.preventDefault() },
      field('User', user),
      field('Action', action, null, 'action'),
      actions,
      field('Any text', text, null, 'text')),
    count,
    body,
    olderBox,
  );
  draw();
}

// ---------------------------------------------------------------------------------------------
// Configuration export and import (admins)

function readText(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(new ApiError(0, `config: ${file.name} cannot be read`));
    r.readAsText(file);
  });
}

function names(list) {
  return list.length ? list.join(', ') : 'none';
}

function importReport(r) {
  const rows = [
    ['Platforms added', names(r.platforms_added)],
    ['Platforms kept as they were', names(r.platforms_kept)],
    ['Storage targets added', names(r.storage_added)],
    ['Storage targets kept as they were', names(r.storage_kept)],
    ['Rules added', names(r.rules_added)],
    ['Rules kept as they were', names(r.rules_kept)],
  ];
  return h('section', { class: 'report', 'aria-label': 'What the import did', tabindex: -1 },
    h('p', { role: 'status' }, h('strong', {}, 'Imported.')),
    h('dl', { class: 'facts' }, rows.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])),
    r.notes.length ? [h('p', {}, 'Notes:'), h('ul', {}, r.notes.map((n) => h('li', {}, n)))] : null);
}

async function configuration(box, { signal }) {
  let url = null;
  signal.addEventListener('abort', () => {
    if (url) URL.revokeObjectURL(url);
  });
  const exportPass = h('input', { name: 'passphrase', type: 'password', autocomplete: 'new-password' });
  const exported = h('div');
  const exporting = form({ class: 'card', 'aria-label': 'Export the configuration' }, [
    h('h3', {}, 'Export'),
    h('p', {}, 'One JSON file with the platforms, storage targets, rules, bandwidth windows and alert settings: with the stores, it rebuilds this appliance.'),
    field('Passphrase (optional)', exportPass,
      'With a passphrase (10 characters or more) the platform and mail passwords and the store passphrases are sealed into the file; without one they are left out.'),
    buttons(h('button', { type: 'submit', class: 'primary' }, 'Export configuration')),
    exported,
  ], async () => {
    const v = await api('POST', '/api/config/export', exportPass.value ? { passphrase: exportPass.value } : {});
    exportPass.value = '';
    if (url) URL.revokeObjectURL(url);
    url = URL.createObjectURL(new Blob([`${JSON.stringify(v, null, 2)}\n`], { type: 'application/json' }));
    const d = new Date();
    const pad = (n) => String(n).padStart(2, '0');
    const file = `holdfast-config-${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}-${pad(d.getHours())}${pad(d.getMinutes())}.json`;
    const count = (list, one, many) => `${list.length} ${list.length === 1 ? one : many}`;
    exported.replaceChildren(h('div', { class: 'notice', role: 'status' },
      h('p', {}, `Ready: ${count(v.platforms, 'platform', 'platforms')}, ${count(v.storage, 'storage target', 'storage targets')}, `,
        `${count(v.rules, 'rule', 'rules')}, ${count(v.bandwidth, 'bandwidth window', 'bandwidth windows')}`,
        v.alerts ? ' and the alert settings' : '', '; passwords ', v.sealing ? 'sealed with your passphrase.' : 'left out.'),
      (v.notes || []).length ? h('ul', { class: 'small' }, v.notes.map((n) => h('li', {}, n))) : null,
      h('a', { href: url, download: file, class: 'button primary' }, `Download ${file}`)));
    exported.querySelector('a').focus();
  });
  const file = h('input', { name: 'config', type: 'file', accept: '.json,application/json' });
  const importPass = h('input', { name: 'passphrase', type: 'password', autocomplete: 'off' });
  const report = h('div');
  const importing = form({ class: 'card', 'aria-label': 'Import a configuration' }, [
    h('h3', {}, 'Import'),
    h('p', {}, 'Adds what an exported file holds, all or nothing. Platforms, storage targets and rules whose names exist here are kept as they are, so importing twice changes nothing.'),
    field('Exported file', file, null, 'config'),
    field('Passphrase (if the file has sealed passwords)', importPass),
    buttons(h('button', { type: 'submit', class: 'primary' }, 'Import')),
    report,
  ], async () => {
    report.replaceChildren();
    const chosen = file.files[0];
    if (!chosen) throw new ApiError(400, 'config: choose the exported file first');
    const text = await readText(chosen);
    let config;
    try {
      config = JSON.parse(text);
    } catch (e) {
      throw new ApiError(400, `config: ${chosen.name} is not JSON (${e.message})`);
    }
    const body = { config };
    if (importPass.value) body.passphrase = importPass.value;
    const r = await api('POST', '/api/config/import', body);
    importPass.value = '';
    report.replaceChildren(importReport(r));
    report.firstChild.focus();
    toast('Configuration imported.');
  });
  fill(box, sectionHead('Configuration'), exporting, importing);
}

// ---------------------------------------------------------------------------------------------

export async function render(main, { params, signal }) {
  const allowed = SECTIONS.filter((s) => s.show());
  const wanted = SECTIONS.find((s) => s.path === params[0]);
  const section = wanted || allowed[0];
  const nav = h('nav', { class: 'tabs', 'aria-label': 'Settings sections' },
    h('ul', {}, allowed.map((s) => h('li', {},
      h('a', { href: `#/settings/${s.path}`, 'aria-current': s === section ? 'page' : null }, s.title)))));
  const box = h('section', { class: 'settings-section', 'aria-labelledby': 'settings-h' });
  main.append(heading('Settings'), nav, box);
  document.title = `${section.title} · Settings · Holdfast`;
  // Following a section link rebuilds the page: keep the keyboard on the section list.
  const focusNav = () => {
    if (params[0] && (document.activeElement === document.body || !document.activeElement)) {
      const here = nav.querySelector('[aria-current]');
      if (here) here.focus();
    }
  };
  if (!section.show()) {
    box.append(sectionHead(section.title), h('p', { class: 'notice' }, `This section is for ${section.who}.`));
    focusNav();
    return;
  }
  focusNav();
  await section.draw(box, { signal });
}
