// Statistics: per rule and per VM the backups that succeeded and failed in the last week, month
// or year, and per VM the bytes its newest point protects against the bytes its points stored.
// The charts are SVG drawn here (no library); each says what it shows in words (role="img" and
// aria-label), and its numbers are in a table beside it. It refreshes when a job ends.
import { api, h, heading, bytes, table, onJob } from './app.js';

const SVG = 'http://www.w3.org/2000/svg';
const ENDED = ['completed', 'failed', 'stopped', 'skipped'];
const PERIODS = [
  ['week', 'Week', 'the last 7 days'],
  ['month', 'Month', 'the last 30 days'],
  ['year', 'Year', 'the last 365 days'],
];

/// An SVG element; attributes as given, children are nodes or text.
function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  Object.entries(attrs || {}).forEach(([k, v]) => el.setAttribute(k, String(v)));
  children.flat(Infinity).filter((c) => c !== null && c !== undefined).forEach((c) => el.append(c));
  return el;
}

function clip(text, n) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}

// Geometry of a chart row, in pixels: a label line, then one bar per series.
const LABEL = 18;
const BAR = 14;
const GAP = 4;
const ROW_GAP = 14;
/// The longest bar's share of the width; the rest holds its number.
const SPAN = 50;

/// A horizontal bar chart. `items` are { label, values } with one value per series; series are
/// { key, word, tone } and `show(value, series)` is the text beside a bar. Bars are sized in
/// percent of the width, so the chart follows the screen while its text keeps its size.
function barChart(title, items, series, show) {
  const max = Math.max(1, ...items.flatMap((it) => it.values));
  const perRow = LABEL + series.length * (BAR + GAP) + ROW_GAP;
  const height = items.length * perRow;
  const rows = items.map((it, i) => {
    const top = i * perRow;
    return svg('g', { class: 'row' },
      svg('text', { x: 0, y: top + LABEL - 5, class: 'label' }, clip(it.label, 60)),
      series.map((s, k) => {
        const y = top + LABEL + k * (BAR + GAP);
        const share = (it.values[k] / max) * SPAN;
        return [
          it.values[k] > 0 ? svg('rect', { x: 0, y, width: `${share}%`, height: BAR, rx: 2, class: `bar ${s.tone}` }) : null,
          svg('text', { x: `${share}%`, dx: it.values[k] > 0 ? 6 : 0, y: y + BAR - 2, class: 'value' }, show(it.values[k], s)),
        ];
      }));
  });
  const words = items.map((it) => `${it.label}: ${series.map((s, k) => show(it.values[k], s)).join(', ')}`).join('; ');
  return svg('svg', {
    class: 'chart', width: '100%', height, role: 'img', 'aria-label': `${title}. ${words || 'Nothing yet'}.`,
  }, rows);
}

function legend(series) {
  return h('p', { class: 'chart-legend small' }, series.map((s) => h('span', { class: 'key' },
    h('span', { class: `swatch ${s.tone}`, 'aria-hidden': 'true' }), ` ${s.word}`)));
}

const OUTCOMES = [
  { key: 'succeeded', word: 'succeeded', tone: 'ok' },
  { key: 'failed', word: 'failed', tone: 'bad' },
];
const SPACE = [
  { key: 'protected', word: 'protected', tone: 'protected' },
  { key: 'stored', word: 'stored', tone: 'stored' },
];

/// Bytes protected to bytes stored, "2.5 : 1"; none while nothing is stored.
function ratio(v) {
  if (!v.stored_bytes || !v.protected_bytes) return '–';
  const r = v.protected_bytes / v.stored_bytes;
  return `${r >= 10 ? r.toFixed(0) : r.toFixed(1)} : 1`;
}

function figure(label, value, tone, name) {
  return h('div', { class: `figure ${tone || ''}`, 'data-figure': name },
    h('span', { class: 'value' }, String(value)), h('span', { class: 'label' }, label));
}

function draw(box, stats, platforms, period) {
  const [, , span] = PERIODS.find(([p]) => p === period);
  const platformName = (id) => (platforms.find((p) => p.id === id) || { name: `platform ${id}` }).name;
  const several = new Set(stats.vms.map((v) => v.platform)).size > 1;
  const vmLabel = (v) => (several ? `${v.vm} (${platformName(v.platform)})` : v.vm);
  const count = (row, key) => row[key][period];
  const outcomeShow = (n, s) => `${n} ${s.word}`;
  const spaceShow = (n, s) => `${bytes(n)} ${s.word}`;
  const succeeded = stats.vms.reduce((n, v) => n + count(v, 'succeeded'), 0);
  const failed = stats.vms.reduce((n, v) => n + count(v, 'failed'), 0);
  const unread = stats.vms.reduce((n, v) => n + v.unread_errors, 0);
  const protectedBytes = stats.vms.reduce((n, v) => n + v.protected_bytes, 0);
  const storedBytes = stats.vms.reduce((n, v) => n + v.stored_bytes, 0);

  const pair = (chart, numbers) => h('div', { class: 'chart-pair' }, h('div', { class: 'chart-box' }, chart), numbers);
  const rules = stats.rules.length === 0 ? h('p', { class: 'empty' }, 'No rule yet.') : pair(
    [legend(OUTCOMES), barChart(`Backups per rule in ${span}`,
      stats.rules.map((r) => ({ label: r.name, values: [count(r, 'succeeded'), count(r, 'failed')] })), OUTCOMES, outcomeShow)],
    table(['Rule', 'Succeeded', 'Failed'], stats.rules.map((r) => h('tr', { 'data-rule': r.rule },
      h('td', {}, r.name), h('td', { class: 'num' }, String(count(r, 'succeeded'))), h('td', { class: 'num' }, String(count(r, 'failed'))))),
    `Backups per rule in ${span}`));
  const vms = stats.vms.length === 0 ? h('p', { class: 'empty' }, 'No backup has run yet.') : pair(
    [legend(OUTCOMES), barChart(`Backups per VM in ${span}`,
      stats.vms.map((v) => ({ label: vmLabel(v), values: [count(v, 'succeeded'), count(v, 'failed')] })), OUTCOMES, outcomeShow)],
    table(['VM', 'Succeeded', 'Failed', 'Unread errors'], stats.vms.map((v) => h('tr', { 'data-vm': v.vm },
      h('td', {}, vmLabel(v)), h('td', { class: 'num' }, String(count(v, 'succeeded'))), h('td', { class: 'num' }, String(count(v, 'failed'))),
      h('td', { class: 'num' }, v.unread_errors ? h('span', { class: 'badge bad' }, String(v.unread_errors)) : '0'))),
    `Backups per VM in ${span}`));
  const space = stats.vms.length === 0 ? h('p', { class: 'empty' }, 'No point yet.') : pair(
    [legend(SPACE), barChart('Bytes protected and stored per VM',
      stats.vms.map((v) => ({ label: `${vmLabel(v)} · ${ratio(v)}`, values: [v.protected_bytes, v.stored_bytes] })), SPACE, spaceShow)],
    table(['VM', 'Protected', 'Stored', 'Ratio'], stats.vms.map((v) => h('tr', { 'data-vm': v.vm },
      h('td', {}, vmLabel(v)), h('td', { class: 'num' }, bytes(v.protected_bytes)), h('td', { class: 'num' }, bytes(v.stored_bytes)),
      h('td', { class: 'num' }, ratio(v)))),
    'Bytes protected and stored per VM'));

  box.replaceChildren(
    h('section', { class: 'card', 'aria-labelledby': 'st-totals' },
      h('h2', { id: 'st-totals' }, `In ${span}`),
      h('div', { class: 'figures' },
        figure('backups succeeded', succeeded, 'ok', 'succeeded'),
        figure('backups failed', failed, failed ? 'bad' : '', 'failed'),
        figure('failed, log unread', unread, unread ? 'bad' : '', 'unread'),
        figure('protected', bytes(protectedBytes), '', 'protected'),
        figure('stored', bytes(storedBytes), '', 'stored'))),
    h('section', { class: 'card', 'aria-labelledby': 'st-rules' },
      h('h2', { id: 'st-rules' }, 'Backups per rule'), rules),
    h('section', { class: 'card', 'aria-labelledby': 'st-vms' },
      h('h2', { id: 'st-vms' }, 'Backups per VM'), vms),
    h('section', { class: 'card', 'aria-labelledby': 'st-space' },
      h('h2', { id: 'st-space' }, 'Protected and stored per VM'),
      h('p', { class: 'muted small' }, 'Protected: the disks of the VM\'s newest point. Stored: what all its points added to the store. ',
        'The ratio is protected to stored: 2 : 1 means the points take half the space of the disks they protect.'),
      space),
  );
}

export async function render(main, { signal }) {
  let period = 'week';
  let stats = null;
  let platforms = [];
  const box = h('div', { class: 'stats' });
  const switcher = h('fieldset', { class: 'segmented' }, h('legend', {}, 'Period'),
    PERIODS.map(([value, word, span]) => {
      const input = h('input', { type: 'radio', name: 'period', value, checked: value === period, id: `period-${value}` });
      input.addEventListener('change', () => {
        period = value;
        if (stats) draw(box, stats, platforms, period);
      });
      return [input, h('label', { for: `period-${value}`, title: span }, word)];
    }));
  main.append(heading('Statistics', switcher), box);
  const load = async () => {
    [stats, platforms] = await Promise.all([api('GET', '/api/stats'), api('GET', '/api/platforms')]);
    if (!signal.aborted) draw(box, stats, platforms, period);
  };
  await load();
  let pending = null;
  onJob((job) => {
    // A finished job changes the counts; many end together when a rule runs: one refresh.
    if (!ENDED.includes(job.state) || pending) return;
    pending = setTimeout(() => {
      pending = null;
      if (!signal.aborted) load().catch(() => {});
    }, 1000);
  }, signal);
}
