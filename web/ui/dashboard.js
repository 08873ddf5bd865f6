// The dashboard: what is protected and what is not, the last day's jobs, the storage targets,
// and what needs the admin's attention. It follows the job stream live.
import { api, h, heading, bytes, when, stateBadge, onJob, onSystem, table } from './app.js';

const SVG = 'http://www.w3.org/2000/svg';

const ENDED = ['completed', 'failed', 'stopped', 'skipped'];

function figure(label, value, tone, id) {
  return h('div', { class: `figure ${tone || ''}`, 'data-figure': id },
    h('span', { class: 'value' }, String(value)), h('span', { class: 'label' }, label));
}

async function unprotected(platforms, rules) {
  const inRule = new Set();
  rules.forEach((r) => r.vms.forEach((vm) => inRule.add(`${r.platform}/${vm}`)));
  const out = [];
  const failures = [];
  await Promise.all(platforms.map(async (p) => {
    try {
      const vms = await api('GET', `/api/platforms/${p.id}/vms`);
      vms.forEach((vm) => {
        if (!inRule.has(`${p.id}/${vm.name}`) && !inRule.has(`${p.id}/${vm.uuid}`)) out.push({ platform: p, vm });
      });
    } catch (err) {
      failures.push(`${p.name}: ${err.message}`);
    }
  }));
  return { out, failures };
}

/// Draws the figures. `known` keeps what the hypervisors said (their VM lists): they are asked
/// when the page opens and on Refresh, not at every job event.
async function fill(box, known) {
  const since = new Date(Date.now() - 24 * 3600 * 1000);
  const generation = ++known.generation;
  const [jobs, rules, platforms, storage, stats] = await Promise.all([
    api('GET', `/api/jobs?limit=5000&since=${encodeURIComponent(since.toISOString())}`), api('GET', '/api/rules'), api('GET', '/api/platforms'),
    api('GET', '/api/storage'), api('GET', '/api/stats'),
  ]);
  if (!known.vms || known.ask) {
    known.ask = false;
    known.vms = await unprotected(platforms, rules);
  } else {
    // Rules may have changed: VMs that joined one are protected now.
    const inRule = new Set(rules.flatMap((r) => r.vms.map((vm) => `${r.platform}/${vm}`)));
    known.vms = { ...known.vms, out: known.vms.out.filter(({ platform, vm }) => !inRule.has(`${platform.id}/${vm.name}`) && !inRule.has(`${platform.id}/${vm.uuid}`)) };
  }
  // An older answer that arrives after a newer one is dropped.
  if (generation !== known.generation) return;
  const { out: loose, failures } = known.vms;
  const protectedCount = rules.reduce((n, r) => n + r.vms.length, 0);
  const recent = jobs;
  const count = (pred) => recent.filter(pred).length;
  const succeeded = count((j) => j.state === 'completed');
  const failed = count((j) => j.state === 'failed');
  const waiting = count((j) => j.state === 'queued' || j.state === 'waiting');
  const running = count((j) => !ENDED.includes(j.state) && j.state !== 'queued' && j.state !== 'waiting');
  const unread = stats.vms.filter((v) => v.unread_errors > 0);
  const next = rules.filter((r) => r.next_run).sort((a, b) => new Date(a.next_run) - new Date(b.next_run));
  const troubled = storage.filter((t) => !t.available || (t.used_percent || 0) >= 90);

  box.replaceChildren(
    h('section', { class: 'card', 'aria-labelledby': 'dash-vms' },
      h('h2', { id: 'dash-vms' }, 'Virtual machines'),
      h('div', { class: 'figures' },
        figure('protected by a rule', protectedCount, 'ok', 'protected'),
        figure('in no rule', loose.length, loose.length ? 'warn' : '', 'unprotected')),
      loose.length ? h('details', {}, h('summary', {}, 'VMs in no rule'),
        h('ul', { class: 'plain' }, loose.map(({ platform, vm }) => h('li', {}, vm.name, h('span', { class: 'muted' }, ` on ${platform.name}`))))) : null,
      failures.map((f) => h('p', { class: 'form-error' }, f))),
    h('section', { class: 'card', 'aria-labelledby': 'dash-jobs' },
      h('h2', { id: 'dash-jobs' }, 'Jobs in the last 24 hours'),
      h('div', { class: 'figures' },
        figure('succeeded', succeeded, 'ok', 'succeeded'),
        figure('failed', failed, failed ? 'bad' : '', 'failed'),
        figure('running', running, running ? 'busy' : '', 'running'),
        figure('waiting', waiting, '', 'waiting'))),
    h('section', { class: 'card', 'aria-labelledby': 'dash-next' },
      h('h2', { id: 'dash-next' }, 'Next scheduled runs'),
      next.length === 0 ? h('p', { class: 'muted' }, 'No enabled rule has a run ahead.')
        : h('ul', { class: 'plain', 'data-next-runs': '' }, next.slice(0, 6).map((r) => h('li', {},
          h('a', { href: '#/rules' }, r.name), h('span', { class: 'muted' }, ` ${when(r.next_run)} · ${r.vms.length} VM(s)`))))),
    h('section', { class: 'card wide', 'aria-labelledby': 'dash-attention' },
      h('h2', { id: 'dash-attention' }, 'Needs attention'),
      (unread.length + troubled.length + failed) === 0 ? h('p', { class: 'muted' }, 'Nothing: every recent job succeeded and every target has room.') : null,
      h('ul', { class: 'plain' },
        troubled.map((t) => h('li', {}, h('span', { class: 'badge bad' }, 'storage'), ' ', t.name, ': ',
          t.available ? `${t.used_percent.toFixed(0)} % full` : (t.error || 'unavailable'))),
        unread.map((v) => h('li', {}, h('span', { class: 'badge bad' }, 'failed'), ' ', v.vm, `: ${v.unread_errors} failed job(s) whose log nobody has read`)),
        recent.filter((j) => j.state === 'failed').slice(0, 10).map((j) => h('li', {}, stateBadge(j.state), ' ',
          h('a', { href: `#/jobs/${j.id}` }, `${j.kind} of ${j.vm}`), ` at ${when(j.finished)}: `, j.error || '')))),
    h('section', { class: 'card wide', 'aria-labelledby': 'dash-storage' },
      h('h2', { id: 'dash-storage' }, 'Storage targets'),
      table(['Target', 'State', 'Used', 'Free', 'Points', 'Protected', 'Stored', 'Saving'], storage.map((t) => h('tr', {},
        h('td', {}, t.name, h('div', { class: 'muted small' }, t.path)),
        h('td', {}, t.available ? 'available' : h('span', { class: 'badge bad' }, 'unavailable')),
        h('td', {}, t.used_percent === null ? '–' : h('span', {},
          h('meter', { min: 0, max: 100, low: 80, high: 90, optimum: 0, value: t.used_percent, 'aria-label': `${t.name} used` }),
          ` ${t.used_percent.toFixed(0)} %`)),
        h('td', {}, bytes(t.free_bytes)),
        h('td', {}, String(t.points)),
        h('td', {}, bytes(t.protected_bytes)),
        h('td', {}, bytes(t.stored_bytes)),
        h('td', { 'data-ratio': t.name }, t.stored_bytes > 0 ? `${(t.protected_bytes / t.stored_bytes).toFixed(1)} : 1` : '–'))), 'Storage targets')),
  );
}

/// The live panel: the appliance's CPU, memory, network and store disk over the last two minutes.
function livePanel(signal) {
  const series = { cpu: [], memory: [], net: [], disk: [] };
  const charts = {
    cpu: chart('CPU'), memory: chart('Memory'), net: chart('Network'), disk: chart('Store disk'),
  };
  const panel = h('section', { class: 'card wide', 'aria-labelledby': 'dash-live' },
    h('h2', { id: 'dash-live' }, 'This appliance, live'),
    h('div', { class: 'live-grid' }, Object.values(charts).map((c) => c.el)),
    h('p', { class: 'muted small', 'data-live-waiting': '' }, 'The first figures come within two seconds.'));
  onSystem((s) => {
    const waiting = panel.querySelector('[data-live-waiting]');
    if (waiting) waiting.remove();
    const push = (k, v) => { series[k].push(v); if (series[k].length > 60) series[k].shift(); };
    push('cpu', s.cpu_percent);
    push('memory', s.memory_total ? (100 * s.memory_used) / s.memory_total : 0);
    push('net', s.net_rx_per_second + s.net_tx_per_second);
    push('disk', s.disk_read_per_second + s.disk_write_per_second);
    charts.cpu.draw(series.cpu, 100, `${s.cpu_percent.toFixed(0)} %`);
    charts.memory.draw(series.memory, 100, `${bytes(s.memory_used)} of ${bytes(s.memory_total)}`);
    charts.net.draw(series.net, null, `in ${bytes(s.net_rx_per_second)}/s · out ${bytes(s.net_tx_per_second)}/s`);
    charts.disk.draw(series.disk, null, `read ${bytes(s.disk_read_per_second)}/s · write ${bytes(s.disk_write_per_second)}/s`);
  }, signal);
  return panel;
}

/// A small area chart with its current value in words beside it.
function chart(label) {
  const value = h('span', { class: 'live-value' }, '–');
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', '0 0 240 60');
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `${label}: no figures yet`);
  const area = document.createElementNS(SVG, 'polygon');
  svg.append(area);
  const el = h('figure', { class: 'live-chart', 'data-live': label }, h('figcaption', {}, h('strong', {}, label), ' ', value), svg);
  return {
    el,
    draw(points, fixedMax, words) {
      const max = fixedMax || Math.max(...points, 1);
      const step = 240 / 59;
      const start = 240 - (points.length - 1) * step;
      const line = points.map((v, i) => `${(start + i * step).toFixed(1)},${(58 - (v / max) * 56).toFixed(1)}`);
      area.setAttribute('points', [`${start.toFixed(1)},60`, ...line, '240,60'].join(' '));
      value.textContent = words;
      svg.setAttribute('aria-label', `${label}: ${words}`);
    },
  };
}

export async function render(main, { signal }) {
  const box = h('div', { class: 'grid' });
  const known = { generation: 0, vms: null, ask: false };
  const refresh = h('button', { type: 'button', onclick: () => { known.ask = true; fill(box, known).catch(() => {}); } }, 'Refresh');
  main.append(heading('Dashboard', refresh), box, livePanel(signal));
  await fill(box, known);
  let pending = null;
  const later = () => {
    // Many events arrive while a job runs: refresh at most every two seconds.
    if (pending) return;
    pending = setTimeout(() => {
      pending = null;
      if (!signal.aborted) fill(box, known).catch(() => {});
    }, 2000);
  };
  onJob(later, signal, later);
}
