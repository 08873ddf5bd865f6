// Backup rules: the list with each VM's live state (progress, rate, ETA, a traffic graph while a
// job runs) and the operations on one rule or several; and the wizard that makes or edits a
// rule in the steps admins know (basic, disks, schedule, retention, advanced, summary). The
// wizard asks the API to check the draft as it is typed (POST /api/rules/check) and shows the
// API's own message under the field it names; nothing is saved until the summary's Save.
import { api, h, heading, field, form, may, table, toast, bytes, when, duration, stateBadge, onJob, fieldOf, showError, clearErrors, ApiError, choice } from './app.js';

const DAYS = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'];
const ENDED = ['completed', 'failed', 'stopped', 'skipped'];
const SVG = 'http://www.w3.org/2000/svg';

export function scheduleText(s) {
  if (!s) return 'none';
  switch (s.kind) {
    case 'once': return `once at ${s.at}`;
    case 'hourly': return `every ${s.every_hours} h from ${s.start}`;
    case 'daily': return `daily at ${s.times.join(', ')}`;
    case 'weekly': return `${s.days.join(', ')} at ${s.times.join(', ')}`;
    case 'monthly': return `days ${s.days.join(', ')} of the month at ${s.times.join(', ')}`;
    default: return s.kind;
  }
}

function retentionText(r) {
  const parts = Object.entries(r || {}).filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => `${k.replace('keep_', 'keep ').replace('_', ' ')} ${v}`);
  return parts.length ? parts.join(', ') : 'keep every point';
}

/// A small line graph of a running job's transfer rate.
function sparkline(samples, label) {
  const w = 120;
  const hgt = 28;
  const max = Math.max(...samples, 1);
  const pts = samples.map((v, i) => `${(i / Math.max(samples.length - 1, 1)) * w},${hgt - (v / max) * (hgt - 2) - 1}`).join(' ');
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${w} ${hgt}`);
  svg.setAttribute('class', 'spark');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label);
  const line = document.createElementNS(SVG, 'polyline');
  line.setAttribute('points', pts);
  svg.append(line);
  return svg;
}

/// A dialog that asks before deleting rules, and whether their points go too.
function confirmDelete(names) {
  return new Promise((resolve) => {
    const data = h('input', { type: 'checkbox', id: 'delete-data' });
    const dialog = h('dialog', { 'aria-labelledby': 'delete-h' },
      h('h2', { id: 'delete-h' }, names.length === 1 ? `Delete rule ${names[0]}?` : `Delete ${names.length} rules?`),
      names.length > 1 ? h('p', {}, names.join(', ')) : null,
      h('p', {}, 'The jobs\' history stays. The rule\'s VMs are no longer backed up.'),
      choice(data, 'Also delete the restore points these rules made (starred and locked points stay)'),
      h('div', { class: 'buttons' },
        h('button', { type: 'button', class: 'danger', onclick: () => { dialog.close(); resolve({ data: data.checked }); } }, 'Delete'),
        h('button', { type: 'button', onclick: () => { dialog.close(); resolve(null); } }, 'Cancel')));
    dialog.addEventListener('cancel', () => resolve(null));
    dialog.addEventListener('close', () => dialog.remove());
    document.body.append(dialog);
    dialog.showModal();
  });
}

async function list(main, signal) {
  const [rules, platforms, jobs] = await Promise.all([api('GET', '/api/rules'), api('GET', '/api/platforms'), api('GET', '/api/jobs?limit=1000')]);
  const platformName = (id) => (platforms.find((p) => p.id === id) || { name: `platform ${id}` }).name;
  const latest = new Map();
  const rates = new Map();
  const note = (j) => {
    if (j.kind !== 'backup' || j.rule === null) return;
    const key = `${j.rule}/${j.vm}`;
    const had = latest.get(key);
    // A newer job wins; for the same job, an older snapshot never moves it back from ended.
    if (!had || had.id < j.id || (had.id === j.id && (!ENDED.includes(had.state) || ENDED.includes(j.state)))) latest.set(key, j);
    if (!ENDED.includes(j.state)) {
      const s = rates.get(j.id) || [];
      s.push(j.rate || 0);
      rates.set(j.id, s.slice(-60));
    }
  };
  [...jobs].reverse().forEach(note);
  const selected = new Set();
  const body = h('div');
  const bar = h('div', { class: 'bulk', role: 'toolbar', 'aria-label': 'Selected rules' });
  const problem = h('p', { class: 'form-error', role: 'alert', hidden: true });
  const fail = (err) => {
    problem.textContent = err.message;
    problem.hidden = false;
  };
  const reload = async () => {
    const fresh = await api('GET', '/api/rules');
    rules.splice(0, rules.length, ...fresh);
    [...selected].forEach((id) => { if (!rules.some((r) => r.id === id)) selected.delete(id); });
    draw();
  };
  const act = async (fn) => {
    problem.hidden = true;
    try {
      await fn();
    } catch (err) {
      fail(err);
    }
    await reload();
  };
  const run = (ids, type) => act(async () => {
    for (const id of ids) {
      const started = await api('POST', `/api/rules/${id}/run`, { type });
      started.forEach(note);
    }
    toast(`${type} backup started for ${ids.length} rule(s).`);
  });
  const enable = (ids, enabled) => act(async () => {
    await api('POST', '/api/rules/state', { ids, enabled });
    toast(`${ids.length} rule(s) ${enabled ? 'enabled' : 'disabled'}.`);
  });
  const remove = async (ids) => {
    const choice = await confirmDelete(ids.map((id) => rules.find((r) => r.id === id).name));
    if (!choice) return;
    await act(async () => {
      for (const id of ids) await api('DELETE', `/api/rules/${id}?delete_data=${choice.data}`);
      toast(`${ids.length} rule(s) deleted.`);
    });
  };
  const stop = (rule) => act(async () => {
    const active = [...latest.values()].filter((j) => j.rule === rule.id && !ENDED.includes(j.state) && j.state !== 'stopping');
    for (const j of active) await api('POST', `/api/jobs/${j.id}/stop`);
    toast(`Stopping ${active.length} job(s) of ${rule.name}.`);
  });
  const vmState = (rule, vm) => {
    const j = latest.get(`${rule.id}/${vm}`);
    if (!j) return h('li', {}, h('span', { class: 'vm' }, vm), ' ', h('span', { class: 'muted small' }, 'no backup yet'));
    const running = !ENDED.includes(j.state);
    return h('li', { 'data-rule-vm': vm },
      h('span', { class: 'vm' }, vm), ' ', stateBadge(j.state),
      running ? h('span', { class: 'live' },
        h('progress', { max: 100, value: j.percent || 0, 'aria-label': `${vm} progress` }),
        h('span', { class: 'small' }, ` ${(j.percent || 0).toFixed(0)} % · ${j.rate ? `${bytes(j.rate)}/s` : '–'} · ${duration(j.eta_seconds)} left `),
        sparkline(rates.get(j.id) || [0], `${vm} transfer rate, now ${bytes(j.rate || 0)}/s`))
        : h('span', { class: 'muted small' }, ` ${when(j.finished)}`),
      ' ', h('a', { href: `#/jobs/${j.id}`, class: 'small' }, `job #${j.id}`));
  };
  const draw = () => {
    const ids = [...selected];
    // Only those who may change rules get the toolbar at all.
    if (may('operate')) bar.replaceChildren(
      h('span', { class: 'small' }, `${ids.length} selected`),
      h('button', { type: 'button', disabled: !ids.length, onclick: () => enable(ids, true) }, 'Enable'),
      h('button', { type: 'button', disabled: !ids.length, onclick: () => enable(ids, false) }, 'Disable'),
      h('button', { type: 'button', disabled: !ids.length, onclick: () => run(ids, 'incremental') }, 'Run incremental now'),
      h('button', { type: 'button', disabled: !ids.length, onclick: () => run(ids, 'full') }, 'Run full now'),
      h('button', { type: 'button', class: 'danger', disabled: !ids.length, onclick: () => remove(ids) }, 'Delete'));
    bar.hidden = !may('operate') || rules.length === 0;
    const all = h('input', { type: 'checkbox', 'aria-label': 'Select every rule', checked: rules.length > 0 && ids.length === rules.length,
      onchange: (e) => { rules.forEach((r) => (e.target.checked ? selected.add(r.id) : selected.delete(r.id))); draw(); } });
    body.replaceChildren(rules.length === 0
      ? h('p', { class: 'empty' }, may('operate') ? 'No rule yet: make one to back VMs up on a schedule.' : 'No rule yet.')
      : table([may('operate') ? all : null, 'Rule', 'VMs and their last backup', 'Schedule', 'Next run', may('operate') ? 'Actions' : null].filter(Boolean),
        rules.map((r) => {
          const type = h('select', { 'aria-label': `Backup type to run ${r.name} now` },
            h('option', { value: 'incremental' }, 'incremental'), h('option', { value: 'full' }, 'full'), h('option', { value: 'differential' }, 'differential'));
          const busy = r.vms.some((vm) => { const j = latest.get(`${r.id}/${vm}`); return j && !ENDED.includes(j.state); });
          return h('tr', { 'data-rule': r.id },
            may('operate') ? h('td', {}, h('input', { type: 'checkbox', 'aria-label': `Select ${r.name}`, checked: selected.has(r.id),
              onchange: (e) => { if (e.target.checked) selected.add(r.id); else selected.delete(r.id); draw(); } })) : null,
            h('td', {}, h('strong', {}, r.name), h('div', { class: 'small muted' }, platformName(r.platform)),
              h('div', { class: 'small muted' }, `${r.snapshot_mode} snapshots${r.bandwidth_mb_per_second ? ` · ${r.bandwidth_mb_per_second} MB/s` : ''}`),
              r.enabled ? null : h('span', { class: 'badge warn' }, 'disabled')),
            h('td', {}, h('ul', { class: 'plain vms' }, r.vms.map((vm) => vmState(r, vm)))),
            h('td', { class: 'small' }, `full: ${scheduleText(r.full)}`, h('br'), r.partial ? `${r.partial.kind}: ${scheduleText(r.partial.schedule)}` : 'no partial backups'),
            h('td', { class: 'small' }, r.next_run ? when(r.next_run) : '–'),
            may('operate') ? h('td', { class: 'row-actions' },
              type, h('button', { type: 'button', onclick: () => run([r.id], type.value), 'aria-label': `Run now: ${r.name}` }, 'Run now'),
              busy ? h('button', { type: 'button', class: 'danger', onclick: () => stop(r), 'aria-label': `Stop ${r.name}` }, 'Stop') : null,
              h('a', { href: `#/rules/${r.id}/edit`, class: 'button', 'aria-label': `Edit ${r.name}` }, 'Edit'),
              h('button', { type: 'button', onclick: () => enable([r.id], !r.enabled), 'aria-label': `${r.enabled ? 'Disable' : 'Enable'} ${r.name}` }, r.enabled ? 'Disable' : 'Enable'),
              h('button', { type: 'button', class: 'danger', onclick: () => remove([r.id]), 'aria-label': `Delete ${r.name}` }, 'Delete')) : null);
        }), 'Backup rules'));
  };
  main.append(heading('Backup rules', may('operate') ? h('a', { href: '#/rules/new', class: 'button primary' }, 'New rule') : null), problem, bar, body);
  draw();
  let pending = null;
  onJob((j) => {
    note(j);
    if (pending) return;
    pending = setTimeout(() => { pending = null; if (!signal.aborted) draw(); }, 300);
  }, signal, async () => {
    [...(await api('GET', '/api/jobs?limit=1000'))].reverse().forEach(note);
    draw();
  });
}

/// The inputs of one schedule, named by its path in the rule ("full", "partial.schedule").
function scheduleEditor(prefix, initial, legend) {
  const s = initial || { kind: 'daily', times: ['22:00'] };
  const kind = h('select', { name: `${prefix}.kind` },
    ['once', 'hourly', 'daily', 'weekly', 'monthly'].map((k) => h('option', { value: k, selected: s.kind === k }, k)));
  const at = h('input', { type: 'datetime-local', name: `${prefix}.at`, value: s.at ? s.at.replace(' ', 'T') : '' });
  const every = h('input', { type: 'number', min: 1, max: 23, name: `${prefix}.every_hours`, value: s.every_hours || 4 });
  const start = h('input', { type: 'time', name: `${prefix}.start`, value: s.start || '00:00' });
  const times = h('input', { name: `${prefix}.times`, value: (s.times || ['22:00']).join(', '), autocomplete: 'off' });
  const weekDays = DAYS.map((d) => h('input', { type: 'checkbox', value: d, id: `${prefix}-day-${d}`, checked: s.kind === 'weekly' && s.days.includes(d) }));
  const monthDays = h('input', { name: `${prefix}.mdays`, value: s.kind === 'monthly' ? s.days.join(', ') : '1', autocomplete: 'off' });
  const parts = {
    at: field('Date and time', at, 'Runs once; a time earlier today runs at once.', `${prefix}.at`),
    every: field('Every (hours)', every, '1 to 23; runs until the end of each day.', `${prefix}.every_hours`),
    start: field('From', start, null, `${prefix}.start`),
    times: field('At (HH:MM, several separated by commas)', times, null, `${prefix}.times`),
    week: h('fieldset', { class: 'field weekdays', 'data-field': `${prefix}.days` }, h('legend', {}, 'On these days'),
      h('div', { class: 'check-row' }, weekDays.map((c) => choice(c, c.value, 'span'))),
      h('small', { class: 'error', 'aria-live': 'polite' })),
    month: field('Days of the month (1-31, separated by commas)', monthDays, 'A month without that day skips it.', `${prefix}.days`),
  };
  const show = () => {
    const k = kind.value;
    parts.at.hidden = k !== 'once';
    parts.every.hidden = k !== 'hourly';
    parts.start.hidden = k !== 'hourly';
    parts.times.hidden = !['daily', 'weekly', 'monthly'].includes(k);
    parts.week.hidden = k !== 'weekly';
    parts.month.hidden = k !== 'monthly';
  };
  kind.addEventListener('change', show);
  show();
  const list = (v) => v.split(/[\s,]+/).filter(Boolean);
  const value = () => {
    switch (kind.value) {
      case 'once': return { kind: 'once', at: at.value.replace('T', ' ') };
      case 'hourly': return { kind: 'hourly', every_hours: Number(every.value), start: start.value };
      case 'daily': return { kind: 'daily', times: list(times.value) };
      case 'weekly': return { kind: 'weekly', days: weekDays.filter((c) => c.checked).map((c) => c.value), times: list(times.value) };
      default: return { kind: 'monthly', days: list(monthDays.value).map(Number), times: list(times.value) };
    }
  };
  const el = h('fieldset', { class: 'schedule' }, h('legend', {}, legend), field('Repeat', kind, null, `${prefix}.kind`),
    parts.at, parts.every, parts.start, parts.week, parts.month, parts.times);
  return { el, value };
}

const STEPS = ['Basic', 'Disks', 'Schedule', 'Retention', 'Advanced', 'Summary'];

async function wizard(main, id) {
  const [platforms, storage, kinds, existing] = await Promise.all([
    api('GET', '/api/platforms'), api('GET', '/api/storage'), api('GET', '/api/platform-kinds'),
    id ? api('GET', `/api/rules/${id}`) : Promise.resolve(null)]);
  if (platforms.length === 0) {
    main.append(heading('New rule'), h('p', { class: 'empty' }, 'Add a platform first: a rule backs up VMs of one platform.'),
      h('a', { href: '#/platforms', class: 'button' }, 'Platforms'));
    return;
  }
  const r = existing || {
    name: '', platform: platforms[0].id, vms: [], storage: 1, disks: [],
    full: { kind: 'weekly', days: ['sat'], times: ['22:00'] },
    partial: { kind: 'incremental', schedule: { kind: 'daily', times: ['22:00'] } },
    retention: { keep_days: 14 }, quiesce: 'auto', change_tracking: 'auto', lan_free: false, enabled: true, delete_data_with_rule: false,
    snapshot_mode: 'serial', bandwidth_mb_per_second: null,
  };
  // Step 1: basic.
  const name = h('input', { name: 'name', value: r.name, autocomplete: 'off' });
  const platform = h('select', { name: 'platform', disabled: Boolean(existing) },
    platforms.map((p) => h('option', { value: p.id, selected: p.id === r.platform }, p.name)));
  const target = h('select', { name: 'storage' },
    storage.map((t) => h('option', { value: t.id, selected: t.id === r.storage }, `${t.name}${t.available ? '' : ' (unavailable)'}`)));
  const vmBox = h('div', { class: 'vm-choices' });
  let vmChecks = [];
  const loadVms = async () => {
    vmBox.replaceChildren(h('p', { class: 'muted' }, 'Asking the platform for its VMs…'));
    try {
      const vms = await api('GET', `/api/platforms/${platform.value}/vms`);
      vmChecks = vms.map((vm, i) => h('input', { type: 'checkbox', id: `vm-${i}`, value: vm.name, checked: r.vms.includes(vm.name) || r.vms.includes(vm.uuid) }));
      vmBox.replaceChildren(vms.length === 0 ? h('p', { class: 'empty' }, 'This platform has no VMs.')
        : h('ul', { class: 'plain checks' }, vms.map((vm, i) => h('li', { class: 'check' }, vmChecks[i],
          h('label', { for: `vm-${i}` }, vm.name, h('span', { class: 'muted small' }, vm.running ? ' running' : ' shut off'))))));
    } catch (err) {
      vmChecks = [];
      vmBox.replaceChildren(h('p', { class: 'form-error', role: 'alert' }, err.message));
    }
  };
  platform.addEventListener('change', () => { r.vms = []; loadVms(); });
  // Step 2: disks.
  const allDisks = h('input', { type: 'radio', name: 'disk-choice', id: 'disks-all', checked: r.disks.length === 0 });
  const someDisks = h('input', { type: 'radio', name: 'disk-choice', id: 'disks-some', checked: r.disks.length > 0 });
  const diskBox = h('div', { class: 'disk-choices' });
  let diskChecks = [];
  const loadDisks = async () => {
    const vms = vmChecks.filter((c) => c.checked).map((c) => c.value);
    diskBox.replaceChildren(h('p', { class: 'muted' }, 'Reading the VMs\' disks…'));
    const described = await Promise.all(vms.map((vm) => api('GET', `/api/platforms/${platform.value}/vms/${encodeURIComponent(vm)}`).catch((e) => ({ name: vm, error: e.message, disks: [] }))));
    const keys = [...new Set(described.flatMap((d) => d.disks.map((x) => x.key)))].sort();
    diskChecks = keys.map((k) => h('input', { type: 'checkbox', id: `disk-${k}`, value: k, checked: r.disks.includes(k) }));
    diskBox.replaceChildren(
      table(['VM', 'Disks'], described.map((d) => h('tr', {}, h('td', {}, d.name),
        h('td', {}, d.error ? h('span', { class: 'error-text' }, d.error) : d.disks.map((x) => `${x.key} (${bytes(x.size)}${x.bus ? `, ${x.bus}` : ''})`).join(', ')))), 'Disks of the chosen VMs'),
      h('fieldset', { class: 'field', 'data-field': 'disks' }, h('legend', {}, 'Disks to back up (each chosen VM must have them)'),
        h('div', { class: 'check-row' }, keys.map((k, i) => choice(diskChecks[i], k, 'span'))),
        h('small', { class: 'error', 'aria-live': 'polite' })));
  };
  // Step 3: schedules.
  const full = scheduleEditor('full', r.full, 'Full backups');
  const partialKind = h('select', { name: 'partial.kind' },
    h('option', { value: '', selected: !r.partial }, 'none: every backup is full'),
    h('option', { value: 'incremental', selected: r.partial && r.partial.kind === 'incremental' }, 'incremental'),
    h('option', { value: 'differential', selected: r.partial && r.partial.kind === 'differential' }, 'differential'));
  const partial = scheduleEditor('partial.schedule', r.partial ? r.partial.schedule : null, 'Between the fulls');
  const showPartial = () => { partial.el.hidden = !partialKind.value; };
  partialKind.addEventListener('change', showPartial);
  showPartial();
  // Step 4: retention.
  const keep = ['keep_last', 'keep_days', 'keep_weeks', 'keep_daily', 'keep_weekly', 'keep_monthly', 'keep_yearly'].map((k) => ({
    k, input: h('input', { type: 'number', min: 0, name: `retention.${k}`, value: r.retention[k] ?? '' }),
  }));
  const keepHelp = {
    keep_last: 'the newest N points', keep_days: 'points from today and the N previous days (0-64)',
    keep_weeks: 'points from this week and the N previous ones (0-64)', keep_daily: 'the newest point of each of the last N days that have one',
    keep_weekly: 'the newest of each of the last N weeks', keep_monthly: 'the newest of each of the last N months', keep_yearly: 'the newest of each of the last N years',
  };
  // Step 5: advanced.
  const quiesce = h('select', { name: 'quiesce' }, ['auto', 'off', 'required'].map((q) => h('option', { value: q, selected: r.quiesce === q }, q)));
  const tracking = h('select', { name: 'change_tracking' }, ['auto', 'on', 'off'].map((q) => h('option', { value: q, selected: r.change_tracking === q }, q)));
  const lanFree = h('input', { type: 'checkbox', id: 'lan-free', checked: r.lan_free });
  const snapshotMode = h('select', { name: 'snapshot_mode' },
    h('option', { value: 'serial', selected: r.snapshot_mode !== 'parallel' }, 'serial'),
    h('option', { value: 'parallel', selected: r.snapshot_mode === 'parallel' }, 'parallel'));
  const bandwidth = h('input', { type: 'number', name: 'bandwidth_mb_per_second', min: 0, step: 'any', inputmode: 'decimal',
    value: r.bandwidth_mb_per_second ?? '', placeholder: 'no limit' });
  const enabled = h('input', { type: 'checkbox', id: 'enabled', checked: r.enabled });
  const deleteData = h('input', { type: 'checkbox', id: 'delete-data-with-rule', checked: r.delete_data_with_rule });
  const kindOf = () => kinds.find((k) => k.kind === (platforms.find((p) => String(p.id) === platform.value) || {}).kind);

  const collect = () => {
    const retention = {};
    keep.forEach(({ k, input }) => { if (input.value !== '') retention[k] = Number(input.value); });
    return {
      name: name.value.trim(),
      platform: Number(platform.value),
      vms: vmChecks.filter((c) => c.checked).map((c) => c.value),
      storage: Number(target.value),
      disks: someDisks.checked ? diskChecks.filter((c) => c.checked).map((c) => c.value) : [],
      full: full.value(),
      partial: partialKind.value ? { kind: partialKind.value, schedule: partial.value() } : null,
      retention,
      quiesce: quiesce.value,
      change_tracking: tracking.value,
      lan_free: lanFree.checked,
      snapshot_mode: snapshotMode.value,
      bandwidth_mb_per_second: bandwidth.value === '' ? null : Number(bandwidth.value),
      enabled: enabled.checked,
      delete_data_with_rule: deleteData.checked,
    };
  };
  const summary = h('div');
  const drawSummary = () => {
    const d = collect();
    const rows = [
      ['Name', d.name], ['Platform', platform.selectedOptions[0].textContent], ['Storage target', target.selectedOptions[0].textContent],
      ['VMs', d.vms.join(', ') || 'none'], ['Disks', d.disks.length ? d.disks.join(', ') : 'every disk'],
      ['Full backups', scheduleText(d.full)], ['Between fulls', d.partial ? `${d.partial.kind}: ${scheduleText(d.partial.schedule)}` : 'none'],
      ['Retention', retentionText(d.retention)], ['Quiesce', d.quiesce], ['Change tracking', d.change_tracking],
      ['LAN-free', d.lan_free ? 'yes' : 'no'], ['Snapshots', d.snapshot_mode],
      ['Bandwidth', d.bandwidth_mb_per_second == null ? 'no limit of its own' : `${d.bandwidth_mb_per_second} MB/s`], ['Enabled', d.enabled ? 'yes' : 'no'],
      ['Deleting the rule deletes its points', d.delete_data_with_rule ? 'yes' : 'no'],
    ];
    summary.replaceChildren(h('dl', { class: 'facts' }, rows.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])));
  };

  const steps = [
    h('div', { 'data-step': 0 }, field('Rule name', name), field('Platform', platform, existing ? 'A rule\'s platform cannot change.' : null),
      field('Storage target', target, 'Moving a rule to another target makes each VM\'s next backup a full there.'),
      h('fieldset', { class: 'field', 'data-field': 'vms' }, h('legend', {}, 'VMs'), vmBox, h('small', { class: 'error', 'aria-live': 'polite' }))),
    h('div', { 'data-step': 1 }, choice(allDisks, 'Every disk of each VM (disks added later too)'),
      choice(someDisks, 'Only the disks chosen below'), diskBox),
    h('div', { 'data-step': 2 }, full.el, field('Partial backups', partialKind, 'Incrementals read what changed since the last backup; differentials since the last full.', 'partial.kind'), partial.el),
    h('div', { 'data-step': 3, 'data-field': 'retention', class: 'field' }, h('p', {}, 'After each successful run the rule keeps the points any of these keep (starred and locked points always stay). Empty keeps every point.'),
      h('div', { class: 'grid-fields' }, keep.map(({ k, input }) => field(k.replace('keep_', 'Keep ').replace('_', ' '), input, keepHelp[k], `retention.${k}`))),
      h('small', { class: 'error', 'aria-live': 'polite' })),
    h('div', { 'data-step': 4 }, field('Quiesce', quiesce, 'auto: freeze the guest\'s filesystems where its agent answers; required: fail without.'),
      field('Change tracking', tracking, 'auto: read only changes where the disks support it; on: require it; off: read whole disks.'),
      field('Snapshots', snapshotMode, 'serial: the next VM\'s snapshot when the previous VM\'s backup has ended, lightest for the host. parallel: all snapshots as the run starts, then the reads as the job limits allow, so VMs that work together are captured at one moment.'),
      field('Bandwidth (MB/s)', bandwidth, 'The most the rule\'s backups read together; empty: only the appliance\'s bandwidth windows apply (the lower limit wins).'),
      choice(lanFree, 'LAN-free (over the storage network where the platform offers it)'),
      choice(enabled, 'Enabled (the scheduler runs it)'),
      choice(deleteData, 'Deleting the rule deletes its points')),
    h('div', { 'data-step': 5 }, summary),
  ];
  let at = 0;
  const stepNav = h('ol', { class: 'steps' });
  const back = h('button', { type: 'button' }, 'Back');
  const next = h('button', { type: 'button', class: 'primary' }, 'Next');
  const save = h('button', { type: 'submit', class: 'primary' }, existing ? 'Save changes' : 'Save rule');
  const check = async () => {
    await api('POST', `/api/rules/check${existing ? `?rule=${existing.id}` : ''}`, collect());
  };
  const stepOf = (f, err) => {
    const holder = fieldOf(f, err.message);
    const step = holder && holder.closest('[data-step]');
    return step ? Number(step.dataset.step) : STEPS.length - 1;
  };
  const go = async (to) => {
    at = to;
    steps.forEach((s, i) => { s.hidden = i !== at; });
    stepNav.replaceChildren(...STEPS.map((t, i) => h('li', { 'aria-current': i === at ? 'step' : null }, t)));
    back.hidden = at === 0;
    next.hidden = at === STEPS.length - 1;
    save.hidden = at !== STEPS.length - 1;
    if (at === 1) await loadDisks();
    if (at === STEPS.length - 1) drawSummary();
    const first = steps[at].querySelector('input, select');
    if (first) first.focus();
  };
  const f = form({ class: 'card wizard', 'aria-label': existing ? `Edit rule ${existing.name}` : 'New backup rule' },
    [stepNav, ...steps, h('div', { class: 'buttons' }, back, next, save)], async () => {
      // Enter in a field of an earlier step moves on, as Next does; only the summary saves.
      if (at !== STEPS.length - 1) {
        next.click();
        return;
      }
      let saved;
      try {
        saved = existing ? await api('PUT', `/api/rules/${existing.id}`, collect()) : await api('POST', '/api/rules', collect());
      } catch (err) {
        const step = stepOf(f, err);
        if (step !== at) await go(step);
        throw err;
      }
      toast(`Rule ${saved.name} saved.`);
      location.hash = '#/rules';
    });
  // A refusal on this step or an earlier one keeps the admin there, under its field.
  const showOn = async (err) => {
    const step = stepOf(f, err);
    if (step < at || step === STEPS.length - 1) await go(step);
    showError(f, err);
  };
  next.addEventListener('click', async () => {
    clearErrors(f);
    next.disabled = true;
    try {
      if (at === 0 && vmChecks.every((c) => !c.checked)) throw new ApiError(400, 'vms: choose at least one VM');
      await check();
      await go(at + 1);
    } catch (err) {
      if (err.status === 400 || err.status === 409 ? stepOf(f, err) <= at : true) await showOn(err);
      else await go(at + 1);
    } finally {
      next.disabled = false;
    }
  });
  back.addEventListener('click', () => { clearErrors(f); go(at - 1); });
  // Checked where it is typed: a change on this step asks the API at once.
  // Only the newest check's answer is shown: an older one may arrive after it.
  let asked = 0;
  steps.forEach((s, i) => s.addEventListener('change', async () => {
    if (i !== at) return;
    const mine = ++asked;
    try {
      await check();
      if (mine === asked) clearErrors(f);
    } catch (err) {
      if (mine === asked && stepOf(f, err) === at) showError(f, err);
    }
  }));
  main.append(heading(existing ? `Edit rule ${existing.name}` : 'New backup rule', h('a', { href: '#/rules', class: 'button' }, 'Cancel')), f);
  await loadVms();
  await go(0);
  if (kindOf() && !kindOf().capabilities.lan_free) lanFree.closest('.check').after(h('p', { class: 'muted small' }, 'This platform has no LAN-free transport: its backups use the usual one.'));
}

export async function render(main, { params, signal }) {
  if (params[0] === 'new') await wizard(main, null);
  else if (params[0] && params[1] === 'edit') await wizard(main, params[0]);
  else await list(main, signal);
}
