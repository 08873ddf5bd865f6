// Jobs: every backup and restore with filters, each job's progress (live), its log with a level
// filter, and stop.
import { api, h, heading, bytes, when, duration, stateBadge, onJob, may, table, toast, field } from './app.js';

const ENDED = ['completed', 'failed', 'stopped', 'skipped'];

function rate(bytesPerSecond) {
  return bytesPerSecond ? `${bytes(bytesPerSecond)}/s` : '–';
}

// Names a platform as "name (kind)"; a restore's source may be only a kind (a re-imported point,
// or a platform removed since).
async function platformNamer() {
  const [platforms, kinds] = await Promise.all([api('GET', '/api/platforms'), api('GET', '/api/platform-kinds')]);
  // The kind's title without its aside: "VMware vSphere", not "VMware vSphere (vCenter or ESXi)".
  const title = (kind) => (kinds.find((k) => k.kind === kind) || { title: kind }).title.replace(/\s*\(.*\)$/, '');
  const target = (job) => {
    const p = platforms.find((x) => x.id === job.platform);
    return p ? `${p.name} (${title(p.kind)})` : `platform ${job.platform}`;
  };
  const source = (job) => (job.source_platform ? `${job.source_platform} (${title(job.source_kind)})` : title(job.source_kind));
  return { target, source, text: (job) => (job.kind === 'restore' && job.source_kind ? `${source(job)} → ${target(job)}` : target(job)) };
}

function progress(job) {
  const pct = Math.max(0, Math.min(100, job.percent || 0));
  return h('div', { class: 'progress-cell' },
    h('progress', { max: 100, value: pct, 'aria-label': `job ${job.id} progress` }),
    h('span', { class: 'small' }, `${pct.toFixed(0)} %`));
}

async function list(main, signal) {
  const [jobs, rules, names] = await Promise.all([api('GET', '/api/jobs?limit=1000'), api('GET', '/api/rules'), platformNamer()]);
  const ruleFilter = h('select', { name: 'rule' },
    h('option', { value: '' }, 'any rule or none'),
    h('option', { value: 'none' }, 'on demand (no rule)'),
    rules.map((r) => h('option', { value: r.id }, r.name)));
  const ruleName = (id) => (rules.find((r) => r.id === id) || { name: `rule ${id}` }).name;
  const stateFilter = h('select', { name: 'state' },
    h('option', { value: '' }, 'any state'),
    h('option', { value: 'active' }, 'running or waiting'),
    ['completed', 'failed', 'stopped', 'skipped'].map((s) => h('option', { value: s }, s)));
  const kindFilter = h('select', { name: 'kind' },
    h('option', { value: '' }, 'backups and restores'),
    h('option', { value: 'backup' }, 'backups'),
    h('option', { value: 'restore' }, 'restores'));
  const vmFilter = h('input', { name: 'vm', type: 'search', autocomplete: 'off' });
  const sinceFilter = h('select', { name: 'since' },
    h('option', { value: '' }, 'any time'),
    h('option', { value: '24' }, 'last 24 hours'),
    h('option', { value: '168' }, 'last 7 days'),
    h('option', { value: '720' }, 'last 30 days'));
  const body = h('div');
  const byId = new Map(jobs.map((j) => [j.id, j]));
  const draw = () => {
    const since = sinceFilter.value ? Date.now() - Number(sinceFilter.value) * 3600 * 1000 : 0;
    const needle = vmFilter.value.trim().toLowerCase();
    const shown = [...byId.values()].sort((a, b) => b.id - a.id).filter((j) =>
      (!stateFilter.value || (stateFilter.value === 'active' ? !ENDED.includes(j.state) : j.state === stateFilter.value))
      && (!kindFilter.value || j.kind === kindFilter.value)
      && (!ruleFilter.value || (ruleFilter.value === 'none' ? j.rule === null : String(j.rule) === ruleFilter.value))
      && (!needle || j.vm.toLowerCase().includes(needle))
      && new Date(j.created).getTime() >= since);
    body.replaceChildren(shown.length === 0 ? h('p', { class: 'empty' }, 'No job matches.')
      : table(['Job', 'VM', 'Platform', 'Kind', 'State', 'Progress', 'Rate', 'Started', 'Rule'], shown.map((j) => h('tr', { 'data-job': j.id },
        h('td', {}, h('a', { href: `#/jobs/${j.id}` }, `#${j.id}`)),
        h('td', {}, j.vm),
        h('td', { class: 'platform-cell' }, names.text(j)),
        h('td', {}, `${j.kind} (${j.type.replaceAll('_', ' ')})`),
        h('td', {}, stateBadge(j.state)),
        h('td', {}, progress(j)),
        h('td', {}, rate(j.rate)),
        h('td', {}, when(j.started || j.created)),
        h('td', {}, j.rule === null ? 'on demand' : ruleName(j.rule)))), 'Jobs'));
  };
  [stateFilter, kindFilter, ruleFilter, sinceFilter].forEach((s) => s.addEventListener('change', draw));
  vmFilter.addEventListener('input', draw);
  main.append(heading('Jobs'),
    h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter jobs', onsubmit: (e) => e.preventDefault() },
      field('State', stateFilter), field('Kind', kindFilter), field('Rule', ruleFilter), field('VM name', vmFilter), field('Created', sinceFilter)),
    body);
  draw();
  onJob((j) => {
    byId.set(j.id, j);
    draw();
  }, signal, async () => {
    (await api('GET', '/api/jobs?limit=1000')).forEach((j) => {
      const had = byId.get(j.id);
      if (!had || !ENDED.includes(had.state) || ENDED.includes(j.state)) byId.set(j.id, j);
    });
    draw();
  });
}

function summary(job, names) {
  const rows = [
    ['VM', job.vm],
    ...(job.kind === 'restore' && job.source_kind
      ? [['From', names.source(job)], ['Onto', names.target(job)]]
      : [['Platform', names.target(job)]]),
    ['Kind', `${job.kind}, ${job.type.replaceAll('_', ' ')}`],
    ['State', stateBadge(job.state)],
    ['Progress', h('span', {}, progress(job), ` ${bytes(job.done_bytes)} of ${bytes(job.total_bytes)}`)],
    [ENDED.includes(job.state) ? 'Average rate' : 'Rate', rate(job.rate)],
    ['Time left', ENDED.includes(job.state) ? '–' : duration(job.eta_seconds)],
    ['Created', when(job.created)],
    ['Started', when(job.started)],
    ['Finished', when(job.finished)],
    ['Restore point', job.point_id || '–'],
  ];
  if (job.error) rows.push(['Error', h('span', { class: 'error-text' }, job.error)]);
  return h('dl', { class: 'facts' }, rows.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

async function detail(main, id, signal) {
  let job = await api('GET', `/api/jobs/${id}`);
  const names = await platformNamer();
  const facts = h('div');
  const stop = h('button', { type: 'button', class: 'danger', hidden: true }, 'Stop job');
  const levelFilter = h('select', { name: 'level' },
    h('option', { value: '' }, 'every level'),
    ['error', 'warning', 'info'].map((l) => h('option', { value: l }, `${l} only`)));
  const logBox = h('div');
  let lines = [];
  const drawLog = () => {
    const shown = lines.filter((l) => !levelFilter.value || l.level === levelFilter.value);
    logBox.replaceChildren(shown.length === 0 ? h('p', { class: 'empty' }, 'No log lines.')
      : h('ol', { class: 'log' }, shown.map((l) => h('li', { class: `level-${l.level}` },
        h('time', {}, when(l.time)), ' ', h('span', { class: 'level' }, l.level), ' ', h('span', { class: 'message' }, l.message)))));
  };
  const loadLog = async () => {
    lines = await api('GET', `/api/jobs/${id}/log`);
    drawLog();
  };
  // A reply read before an event that came first must not move an ended job back.
  const take = (fresh) => {
    if (!ENDED.includes(job.state) || ENDED.includes(fresh.state)) job = fresh;
    draw();
  };
  const draw = () => {
    facts.replaceChildren(summary(job, names));
    stop.hidden = !may('operate') || ENDED.includes(job.state) || job.state === 'stopping';
  };
  stop.addEventListener('click', async () => {
    if (!window.confirm(`Stop job ${id} (${job.vm})? Nothing it read so far is kept.`)) return;
    try {
      job = await api('POST', `/api/jobs/${id}/stop`);
      toast(`Job ${id} is stopping.`);
      draw();
    } catch (err) {
      toast(err.message);
    }
  });
  levelFilter.addEventListener('change', drawLog);
  main.append(heading(`Job #${id}`, may('operate') ? stop : null, h('a', { href: '#/jobs', class: 'button' }, 'All jobs')),
    h('section', { class: 'card', 'aria-label': 'Job' }, facts),
    h('section', { class: 'card', 'aria-labelledby': 'log-h' },
      h('div', { class: 'page-head' }, h('h2', { id: 'log-h' }, 'Log'), field('Level', levelFilter)),
      logBox));
  draw();
  // Listening first, then reading: a change between the two is not lost.
  onJob((j) => {
    if (String(j.id) !== String(id)) return;
    const ended = ENDED.includes(j.state) && !ENDED.includes(job.state);
    job = j;
    draw();
    if (ended) loadLog();
  }, signal, async () => {
    take(await api('GET', `/api/jobs/${id}`));
    await loadLog();
  });
  take(await api('GET', `/api/jobs/${id}`));
  await loadLog();
}

export async function render(main, { params, signal }) {
  if (params[0]) await detail(main, params[0], signal);
  else await list(main, signal);
}
