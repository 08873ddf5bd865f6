// Restore points: the VMs that have points, and per VM a timeline of its points (type, size,
// duration, transport, why a run was full), with star, lock until a date and delete where the
// point allows it; an immutable or starred point says why it cannot be deleted.
import { api, h, heading, may, table, toast, bytes, when, duration, form } from './app.js';

function seconds(p) {
  return (new Date(p.finished) - new Date(p.started)) / 1000;
}

function typeBadge(type) {
  return h('span', { class: `badge ${type === 'full' ? 'busy' : 'ok'}` }, type);
}

async function vms(main) {
  const points = await api('GET', '/api/points');
  const byVm = new Map();
  points.forEach((p) => {
    const v = byVm.get(p.vm_key) || { key: p.vm_key, name: p.vm_name, points: [], stored: 0 };
    v.points.push(p);
    v.stored += p.stored_bytes;
    byVm.set(p.vm_key, v);
  });
  main.append(heading('Restore points', may('operate') ? h('a', { href: '#/restore', class: 'button primary' }, 'Restore…') : null),
    byVm.size === 0 ? h('p', { class: 'empty' }, 'No restore point yet: back a VM up first.')
      : table(['VM', 'Points', 'Newest', 'Stored'], [...byVm.values()].map((v) => h('tr', { 'data-vm-key': v.key },
        h('td', {}, h('a', { href: `#/points/${encodeURIComponent(v.key)}` }, v.name)),
        h('td', {}, String(v.points.length)),
        h('td', {}, when(v.points[0].started)),
        h('td', {}, bytes(v.stored)))), 'VMs with restore points'));
}

async function timeline(main, key) {
  const points = (await api('GET', '/api/points')).filter((p) => p.vm_key === key);
  const name = points.length ? points[0].vm_name : key;
  const box = h('div');
  main.append(heading(`${name}: restore points`,
    may('operate') && points.length ? h('a', { href: `#/restore/${encodeURIComponent(points[0].point_id)}`, class: 'button primary' }, 'Restore the newest…') : null,
    h('a', { href: '#/points', class: 'button' }, 'All VMs')), box);
  if (points.length === 0) {
    box.append(h('p', { class: 'empty' }, 'This VM has no restore points.'));
    return;
  }
  // The newest 100 in detail (eight requests at a time); older ones are listed after them.
  const shown = points.slice(0, 100);
  const details = [];
  for (let i = 0; i < shown.length; i += 8) {
    details.push(...await Promise.all(shown.slice(i, i + 8).map((p) => api('GET', `/api/points/${encodeURIComponent(p.point_id)}`)
      .catch((e) => ({ point_id: p.point_id, error: e.message })))));
  }
  const older = points.slice(100);
  const draw = () => {
    // replaceChildren takes nodes only (a null would show as the text "null").
    box.replaceChildren(h('ol', { class: 'timeline' }, details.map((d) => item(d))),
      ...(older.length ? [h('section', { class: 'card', 'aria-labelledby': 'older-h' }, h('h2', { id: 'older-h' }, `${older.length} older points`),
        table(['Started', 'Type', 'Stored', 'Star', 'Locked until'], older.map((p) => h('tr', {},
          h('td', {}, when(p.started)), h('td', {}, typeBadge(p.type)), h('td', {}, bytes(p.stored_bytes)),
          h('td', {}, p.star ? 'starred' : '–'), h('td', {}, p.locked_until ? when(p.locked_until) : '–'))), 'Older points'))] : []));
  };
  // By id, not by place: a delete meanwhile moves the places.
  const refresh = async (pointId) => {
    const fresh = await api('GET', `/api/points/${encodeURIComponent(pointId)}`);
    const at = details.findIndex((d) => d.point_id === pointId);
    if (at >= 0) details[at] = fresh;
    draw();
  };
  const item = (d) => {
    if (d.error) return h('li', {}, h('span', { class: 'error-text' }, `${d.point_id}: ${d.error}`));
    const reasons = d.disks.filter((x) => x.full_reason).map((x) => `${x.key}: ${x.full_reason}`);
    const problem = h('p', { class: 'form-error', role: 'alert', hidden: true });
    const act = async (fn) => {
      problem.hidden = true;
      try {
        await fn();
      } catch (err) {
        problem.textContent = err.message;
        problem.hidden = false;
      }
    };
    const lockDate = h('input', { type: 'date', name: 'until', 'aria-label': `Lock ${d.point_id} until` });
    return h('li', { class: 'point', 'data-point': d.point_id },
      h('div', { class: 'point-head' },
        h('time', { datetime: d.started }, when(d.started)), ' ', typeBadge(d.type),
        d.star ? h('span', { class: 'badge warn' }, '★ starred') : null,
        d.locked_until ? h('span', { class: 'badge bad' }, `locked until ${when(d.locked_until)}`) : null),
      h('dl', { class: 'facts compact' },
        h('dt', {}, 'Size'), h('dd', {}, `${bytes(d.protected_bytes)} of disks, ${bytes(d.stored_bytes)} stored new, ${bytes(d.read_bytes)} read`),
        h('dt', {}, 'Duration'), h('dd', {}, duration(seconds(d))),
        h('dt', {}, 'Transport'), h('dd', {}, d.transport || 'not recorded (the point came with an adopted store)'),
        h('dt', {}, 'Consistency'), h('dd', {}, d.consistency || '–'),
        reasons.length ? [h('dt', {}, 'Read in full because'), h('dd', {}, reasons.join('; '))] : null,
        h('dt', {}, 'Point id'), h('dd', { class: 'mono small' }, d.point_id)),
      problem,
      h('div', { class: 'row-actions' },
        may('operate') ? h('a', { href: `#/restore/${encodeURIComponent(d.point_id)}`, class: 'button', 'aria-label': `Restore ${when(d.started)}` }, 'Restore') : null,
        may('operate') ? h('a', { href: `#/recoveries/new/${encodeURIComponent(d.point_id)}`, class: 'button', 'aria-label': `Instant recovery of ${when(d.started)}` }, 'Instant recovery') : null,
        may('operate') ? h('button', { type: 'button', disabled: Boolean(d.locked_until) && d.star, onclick: () => act(async () => { await api('POST', `/api/points/${encodeURIComponent(d.point_id)}/star`, { star: !d.star }); toast(d.star ? 'Point unstarred.' : 'Point starred: retention keeps it.'); await refresh(d.point_id); }) }, d.star ? 'Unstar' : 'Star') : null,
        may('admin') ? form({ class: 'inline', 'aria-label': `Lock point ${d.point_id}` }, [lockDate, h('button', { type: 'submit' }, 'Lock until')], async () => {
          await api('POST', `/api/points/${encodeURIComponent(d.point_id)}/lock`, { until: lockDate.value });
          toast('Point locked: nobody can delete it until then.');
          await refresh(d.point_id);
        }) : null,
        may('operate') ? (d.undeletable
          ? h('span', { class: 'small muted' }, `Cannot be deleted: ${d.undeletable}.`)
          : h('button', { type: 'button', class: 'danger', onclick: () => act(async () => {
            if (!window.confirm(`Delete the point of ${when(d.started)}? This cannot be undone.`)) return;
            await api('DELETE', `/api/points/${encodeURIComponent(d.point_id)}`);
            toast('Point deleted.');
            details.splice(details.findIndex((x) => x.point_id === d.point_id), 1);
            draw();
          }) }, 'Delete')) : null));
  };
  draw();
}

export async function render(main, { params }) {
  if (params[0]) await timeline(main, params[0]);
  else await vms(main);
}
