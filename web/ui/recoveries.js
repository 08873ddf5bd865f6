// Instant recovery: restore points exported over the appliance's NFS server, each to the
// clients it names, optionally with a VM started from the export on a platform. The list is
// live (the appliance streams the sessions); a session's VM moves to production storage while it
// runs, or the session ends (its VM stopped and removed, its writes discarded).
import { api, h, heading, field, form, choice, may, table, toast, bytes, when, duration, onRecoveries } from './app.js';

/// A session's state in words a person reads (not its colour alone).
function stateOf(r) {
  const m = r.migration;
  if (m && m.running) return h('span', { class: 'badge busy' }, `moving to ${m.storage}: ${Math.floor(m.percent)} %`);
  if (m && m.error) return h('span', { class: 'badge bad', title: m.error }, 'move failed');
  return h('span', { class: 'badge ok' }, r.vm_started ? 'VM running from the export' : 'exported');
}

/// Asks before ending a session; resolves 'discard', 'keep' (its writes become a new restore
/// point) or null.
function confirmEnd(r) {
  return new Promise((resolve) => {
    const dialog = h('dialog', { 'aria-labelledby': 'end-h' },
      h('h2', { id: 'end-h' }, `End instant recovery ${r.name}?`),
      r.vm_started ? h('p', {}, `VM ${r.vm_started.name} is stopped at once and removed from its platform.`) : null,
      h('p', {}, `The export ${r.export} goes away. What was written to it (${bytes(r.overlay_bytes)}) is discarded, or kept as a new restore point of ${r.vm}. The restore point it came from stays as it is.`),
      h('div', { class: 'buttons' },
        h('button', { type: 'button', class: 'danger', onclick: () => { dialog.close(); resolve('discard'); } }, 'End, discard the writes'),
        h('button', { type: 'button', onclick: () => { dialog.close(); resolve('keep'); } }, 'End, keep them as a point'),
        h('button', { type: 'button', onclick: () => { dialog.close(); resolve(null); } }, 'Cancel')));
    dialog.addEventListener('cancel', () => resolve(null));
    dialog.addEventListener('close', () => dialog.remove());
    document.body.append(dialog);
    dialog.showModal();
  });
}

/// The move to production storage: the platform's storage and disk format, then POST.
async function moveDialog(r, onError) {
  const [inventory, platforms, kinds] = await Promise.all([
    api('GET', `/api/platforms/${r.vm_started.platform}/inventory`), api('GET', '/api/platforms'), api('GET', '/api/platform-kinds')]);
  const p = platforms.find((x) => x.id === r.vm_started.platform) || {};
  const caps = (kinds.find((k) => k.kind === p.kind) || { capabilities: {} }).capabilities;
  const storage = h('select', { name: 'storage' }, inventory.storage.map((s) => h('option', { value: s.name, selected: s.name === caps.default_storage }, `${s.name} (${bytes(s.available)} free)`)));
  const format = h('select', { name: 'disk_format' }, (caps.disk_formats || []).map((f) => h('option', { value: f.name }, `${f.name}: ${f.description}`)));
  const dialog = h('dialog', { 'aria-labelledby': 'move-h' });
  dialog.append(h('h2', { id: 'move-h' }, `Move ${r.vm_started.name} to production storage`),
    h('p', {}, `Its disks are copied while it runs, with what it writes meanwhile, then it switches over. The session then ends and ${r.vm_started.name} stays, as a VM of its platform.`),
    form({ 'aria-label': 'Move to production storage' }, [
      field(caps.storage_word ? caps.storage_word[0].toUpperCase() + caps.storage_word.slice(1) : 'Storage', storage),
      field('Disk format', format),
      h('div', { class: 'buttons' }, h('button', { type: 'submit', class: 'primary' }, 'Move'),
        h('button', { type: 'button', onclick: () => dialog.close() }, 'Cancel')),
    ], async () => {
      try {
        await api('POST', `/api/recoveries/${r.id}/migrate`, { storage: storage.value, disk_format: format.value });
        dialog.close();
        toast('The move has started: its progress shows in the list.');
      } catch (err) {
        dialog.close();
        onError(err);
      }
    }));
  dialog.addEventListener('close', () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
}

async function list(main, signal) {
  const box = h('div');
  const problem = h('p', { class: 'form-error', role: 'alert', hidden: true });
  main.append(heading('Instant recovery', h('a', { href: '#/points', class: 'button' }, 'Restore points…')),
    h('p', { class: 'muted' }, 'Start a session from a restore point on its timeline: its disks are exported over NFS at once, whatever their size, and a VM can run from them while the point stays untouched.'),
    problem, box);
  const fail = (err) => {
    problem.textContent = err.message;
    problem.hidden = false;
  };
  const draw = (sessions) => {
    if (sessions.length === 0) {
      box.replaceChildren(h('p', { class: 'empty' }, 'No instant-recovery session.'));
      return;
    }
    const now = Date.now();
    box.replaceChildren(table(['Session', 'From', 'Clients', 'VM', 'State', 'Read', 'Written', 'Overlay', 'Up', ''],
      sessions.map((r) => h('tr', { 'data-recovery': r.name },
        h('td', {}, r.name, h('div', { class: 'mono small' }, `${r.export} · port ${r.nfs_port}`)),
        h('td', {}, r.vm, h('div', { class: 'small muted' }, r.point)),
        h('td', {}, r.clients.join(', ')),
        h('td', {}, r.vm_started ? r.vm_started.name : '–'),
        h('td', {}, stateOf(r), r.migration && r.migration.error ? h('div', { class: 'small error-text' }, r.migration.error) : null),
        h('td', {}, bytes(r.bytes_read)),
        h('td', {}, bytes(r.bytes_written)),
        h('td', {}, bytes(r.overlay_bytes)),
        h('td', {}, duration((now - new Date(r.created)) / 1000)),
        h('td', { class: 'row-actions' },
          may('operate') && r.vm_started && !(r.migration && r.migration.running)
            ? h('button', { type: 'button', 'aria-label': `Move to production: ${r.vm_started.name}`, onclick: () => moveDialog(r, fail).catch(fail) }, 'Move to production') : null,
          may('operate') && !(r.migration && r.migration.running)
            ? h('button', { type: 'button', class: 'danger', 'aria-label': `End session ${r.name}`, onclick: async () => {
              const how = await confirmEnd(r);
              if (!how) return;
              try {
                if (how === 'keep') {
                  const kept = await api('POST', `/api/recoveries/${r.id}/keep`);
                  toast(`Session ${r.name} ended; its writes are restore point ${kept.point_id}.`);
                } else {
                  await api('DELETE', `/api/recoveries/${r.id}`);
                  toast(`Session ${r.name} ended.`);
                }
                draw(await api('GET', '/api/recoveries'));
              } catch (err) {
                fail(err);
              }
            } }, 'End') : null))), 'Instant-recovery sessions'));
  };
  draw(await api('GET', '/api/recoveries'));
  onRecoveries(draw, signal, async () => draw(await api('GET', '/api/recoveries')));
}

async function start(main, pointId) {
  const [point, platforms, kinds] = await Promise.all([
    api('GET', `/api/points/${encodeURIComponent(pointId)}`), api('GET', '/api/platforms'), api('GET', '/api/platform-kinds')]);
  const able = platforms.filter((p) => ((kinds.find((k) => k.kind === p.kind) || {}).capabilities || {}).instant_recovery);
  const clients = h('input', { name: 'clients', autocomplete: 'off', placeholder: '10.0.0.21, 10.0.1.0/24' });
  const name = h('input', { name: 'name', autocomplete: 'off', placeholder: 'default: the VM\'s name and the point\'s time' });
  const runVm = h('input', { type: 'checkbox', id: 'run-vm', checked: able.length > 0, disabled: able.length === 0 });
  const platform = h('select', { name: 'vm.platform' }, able.map((p) => h('option', { value: p.id }, p.name)));
  const nfsHost = h('input', { name: 'vm.nfs_host', autocomplete: 'off', value: location.hostname });
  const vmName = h('input', { name: 'vm.name', autocomplete: 'off', value: `${point.vm_name}-ir` });
  const network = h('select', { name: 'vm.network' });
  const cpus = h('input', { name: 'vm.cpus', type: 'number', min: 1, max: 1024, placeholder: 'as in the point' });
  const memory = h('input', { name: 'vm.memory_mib', type: 'number', min: 16, placeholder: 'as in the point' });
  const keepMacs = h('input', { type: 'checkbox', id: 'keep-macs' });
  const startIt = h('input', { type: 'checkbox', id: 'start-vm', checked: true });
  const loadNetworks = async () => {
    network.replaceChildren(h('option', { value: '' }, 'each NIC\'s own, as in the point'));
    if (!platform.value) return;
    const inv = await api('GET', `/api/platforms/${platform.value}/inventory`).catch(() => ({ networks: [] }));
    inv.networks.forEach((n) => network.append(h('option', { value: n.name }, n.name)));
  };
  platform.addEventListener('change', loadNetworks);
  await loadNetworks();
  const vmBox = h('fieldset', { class: 'field' }, h('legend', {}, 'The VM'),
    field('Platform', platform, null, 'vm.platform'),
    field('The appliance\'s address, as the platform\'s hosts reach it', nfsHost, 'The NFS server in the VM\'s disks. The host must be among the clients, and reach this appliance on ports 111 and 2049.', 'vm.nfs_host'),
    field('VM name', vmName, null, 'vm.name'),
    field('Network', network, null, 'vm.network'),
    h('div', { class: 'grid-fields' }, field('CPUs', cpus, null, 'vm.cpus'), field('Memory (MiB)', memory, null, 'vm.memory_mib')),
    choice(keepMacs, 'Keep the point\'s MAC addresses even if the original VM is still there (by default they are kept only when it is gone)'),
    choice(startIt, 'Start it'));
  const showVm = () => { vmBox.hidden = !runVm.checked; };
  runVm.addEventListener('change', showVm);
  showVm();
  main.append(heading('Start instant recovery', h('a', { href: '#/recoveries', class: 'button' }, 'Cancel')),
    h('dl', { class: 'facts' },
      h('dt', {}, 'VM'), h('dd', {}, point.vm_name),
      h('dt', {}, 'Restore point'), h('dd', {}, `${when(point.started)} · ${point.type} · ${bytes(point.protected_bytes)}`),
      h('dt', {}, 'Disks'), h('dd', {}, point.disks.map((d) => `${d.key}.raw (${bytes(d.size)})`).join(', '))),
    form({ 'aria-label': 'Start instant recovery', class: 'card' }, [
      field('Clients allowed', clients, 'Addresses or networks (CIDR), separated by commas: only these may mount the export. Every other client is refused and the attempt is audited.', 'clients'),
      field('Export name', name, 'Letters, digits, "-", "_" and ".": the export is /holdfast/<name>.', 'name'),
      able.length ? choice(runVm, 'Run the VM from the export on a platform') : h('p', { class: 'muted' }, 'No platform here can run a VM from the export: the disks are exported only.'),
      vmBox,
      h('div', { class: 'buttons' }, h('button', { type: 'submit', class: 'primary' }, 'Start')),
    ], async () => {
      const body = { point: point.point_id, clients: clients.value.split(',').map((c) => c.trim()).filter(Boolean) };
      if (name.value.trim()) body.name = name.value.trim();
      if (runVm.checked && able.length) {
        body.vm = { platform: Number(platform.value), nfs_host: nfsHost.value.trim(), name: vmName.value.trim() || undefined,
          keep_macs: keepMacs.checked ? true : undefined, start: startIt.checked };
        if (network.value) body.vm.network = network.value;
        if (cpus.value) body.vm.cpus = Number(cpus.value);
        if (memory.value) body.vm.memory_mib = Number(memory.value);
      }
      const r = await api('POST', '/api/recoveries', body);
      toast(`Exported at ${r.export}${r.vm_started ? `; VM ${r.vm_started.name} started` : ''}.`);
      location.hash = '#/recoveries';
    }));
}

export async function render(main, { params, signal }) {
  if (params[0] === 'new' && params[1]) await start(main, params[1]);
  else await list(main, signal);
}
