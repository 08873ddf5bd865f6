// The restore wizard: first the platform to restore onto (any registered one, whatever made the
// point), then the VM and the point; onto the original VM (its disks are overwritten) or as a new
// VM with its own name, CPUs, memory, disks (grown, their storage and format), network and power
// state; onto another kind of platform, the converted hardware (disk bus, NIC model, the
// decisions the restore's log will say) to review and change; a summary before anything starts;
// then the job's own page follows its progress like a backup's.
import { api, h, heading, field, form, toast, bytes, when, ApiError, fieldOf, showError, clearErrors, choice, table } from './app.js';

const STEPS = ['Onto', 'Restore point', 'How', 'New VM', 'Hardware', 'Summary'];

export async function render(main, { params }) {
  const [points, platforms, kinds] = await Promise.all([api('GET', '/api/points'), api('GET', '/api/platforms'), api('GET', '/api/platform-kinds')]);
  main.append(heading('Restore', h('a', { href: '#/points', class: 'button' }, 'Cancel')));
  if (points.length === 0) {
    main.append(h('p', { class: 'empty' }, 'No restore point yet: back a VM up first.'));
    return;
  }
  if (platforms.length === 0) {
    main.append(h('p', { class: 'empty' }, 'Add a platform to restore onto first.'));
    return;
  }
  const chosen = points.find((p) => p.point_id === params[0]) || points[0];
  const vmKeys = [...new Map(points.map((p) => [p.vm_key, p.vm_name])).entries()];
  // Step 1: the VM and its point.
  const vm = h('select', { name: 'vm' }, vmKeys.map(([k, n]) => h('option', { value: k, selected: k === chosen.vm_key }, n)));
  const point = h('select', { name: 'point' });
  const fillPoints = (selected) => {
    point.replaceChildren(...points.filter((p) => p.vm_key === vm.value).map((p) => h('option', { value: p.point_id, selected: p.point_id === selected },
      `${when(p.started)} · ${p.type} · ${bytes(p.protected_bytes)}${p.star ? ' · starred' : ''}`)));
  };
  vm.addEventListener('change', () => fillPoints(null));
  fillPoints(chosen.point_id);
  // Step 2: where.
  const inPlace = h('input', { type: 'radio', name: 'mode', id: 'mode-in-place', value: 'in_place' });
  const newVm = h('input', { type: 'radio', name: 'mode', id: 'mode-new-vm', value: 'new_vm', checked: true });
  const kindTitle = (p) => { const k = kinds.find((x) => x.kind === p.kind); return k ? k.title : p.kind; };
  const platform = h('select', { name: 'platform' }, platforms.map((p) => h('option', { value: p.id }, `${p.name} (${kindTitle(p)})`)));
  // Onto another kind of platform: the converted VM, its choices, and what they decide.
  let conversion = null;
  const diskBus = h('select', { name: 'disk_bus' });
  const nicModel = h('select', { name: 'nic_model' });
  const hardware = h('div');
  const inPlaceNote = h('p', { class: 'notice', role: 'note', hidden: true });
  const loadConversion = async (choices) => {
    conversion = await api('POST', '/api/restores/convert', { point: point.value, platform: Number(platform.value), ...choices });
    if (!conversion.needed) return;
    const options = (list, current) => list.map((c) => h('option', { value: c.name, selected: c.name === current }, `${c.name}: ${c.description}`));
    diskBus.replaceChildren(...options(conversion.disk_buses, conversion.disk_bus));
    nicModel.replaceChildren(...options(conversion.nic_models, conversion.nic_model));
    hardware.replaceChildren(
      h('p', {}, `A ${conversion.source_kind} VM restored onto ${conversion.target_kind}: guest OS ${conversion.guest_os || 'not recorded'}, firmware ${conversion.firmware || 'bios'}.`),
      h('h3', {}, 'Disks'),
      table(['In the point', 'Becomes', 'Bus', 'Size'], conversion.disks.map((d) => h('tr', {}, h('td', {}, d.point_key), h('td', {}, d.key), h('td', {}, d.bus || ''), h('td', {}, bytes(d.size)))), 'Disks of the converted VM'),
      h('h3', {}, 'What the restore decides'),
      h('ul', { class: 'decisions' }, conversion.decisions.map((d) => h('li', {}, d))));
  };
  const convertChoices = () => ({ disk_bus: diskBus.value || undefined, nic_model: nicModel.value || undefined });
  diskBus.addEventListener('change', () => loadConversion(convertChoices()).catch(() => {}));
  nicModel.addEventListener('change', () => loadConversion(convertChoices()).catch(() => {}));
  const warning = h('p', { class: 'notice warn-notice', role: 'note' }, 'The original VM must be shut off. All its disks are overwritten with the point\'s contents: what was written since is lost.');
  // Step 3: the new VM.
  const name = h('input', { name: 'name', autocomplete: 'off' });
  const cpus = h('input', { name: 'cpus', type: 'number', min: 1, max: 1024 });
  const memory = h('input', { name: 'memory_mib', type: 'number', min: 16, step: 1 });
  const storage = h('select', { name: 'storage' });
  const network = h('select', { name: 'network' });
  const host = h('select', { name: 'host' });
  const format = h('select', { name: 'disk_format' });
  const start = h('input', { type: 'checkbox', id: 'start' });
  const keepMacs = h('input', { type: 'checkbox', id: 'keep-macs' });
  const diskBox = h('fieldset', { class: 'field', 'data-field': 'disk_sizes' }, h('legend', {}, 'Disk sizes (a disk can grow, not shrink)'));
  let diskInputs = [];
  let details = null;
  // The point's own platform is the first choice offered.
  const preselect = async () => {
    const d = await api('GET', `/api/points/${encodeURIComponent(chosen.point_id)}`).catch(() => null);
    const job = d && d.job ? await api('GET', `/api/jobs/${d.job}`).catch(() => null) : null;
    if (job && platforms.some((p) => p.id === job.platform)) platform.value = String(job.platform);
  };
  const loadPoint = async () => {
    details = await api('GET', `/api/points/${encodeURIComponent(point.value)}`);
    await loadConversion({});
    // In place needs the point's own kind of platform.
    inPlace.disabled = conversion.needed;
    inPlaceNote.hidden = !conversion.needed;
    inPlaceNote.textContent = conversion.needed ? `Over the original VM needs a ${conversion.source_kind} platform: onto ${conversion.target_kind} the point becomes a new VM.` : '';
    if (conversion.needed) newVm.checked = true;
    if (!name.value || name.dataset.auto === 'yes') {
      name.value = `${details.vm_name}-restored`;
      name.dataset.auto = 'yes';
    }
    // Sizes in MiB as shown; a disk whose field is left as it was keeps its exact size.
    diskInputs = details.disks.map((d) => ({ d, shown: String(Math.ceil(d.size / 1048576)), input: h('input', { type: 'number', min: Math.ceil(d.size / 1048576), value: Math.ceil(d.size / 1048576), name: `disk_sizes.${d.key}` }) }));
    diskBox.replaceChildren(h('legend', {}, 'Disk sizes in MiB (a disk can grow, not shrink)'),
      ...diskInputs.map(({ d, input }) => field(`${d.key} (${bytes(d.size)} in the point)`, input, null, `disk_sizes.${d.key}`)),
      h('small', { class: 'error', 'aria-live': 'polite' }));
  };
  const loadTarget = async () => {
    const p = platforms.find((x) => String(x.id) === platform.value);
    const kind = kinds.find((k) => k.kind === p.kind);
    const caps = kind ? kind.capabilities : { disk_formats: [], storage_word: 'storage' };
    format.replaceChildren(...caps.disk_formats.map((f) => h('option', { value: f.name }, `${f.name}: ${f.description}`)));
    storage.previousElementSibling.textContent = caps.storage_word.charAt(0).toUpperCase() + caps.storage_word.slice(1);
    try {
      const inv = await api('GET', `/api/platforms/${p.id}/inventory`);
      storage.replaceChildren(...inv.storage.map((s) => h('option', { value: s.name, selected: s.name === caps.default_storage }, `${s.name} (${bytes(s.available)} free)`)));
      const keep = conversion && conversion.needed ? [] : [h('option', { value: '' }, 'as in the point')];
      network.replaceChildren(...keep, ...inv.networks.map((n) => h('option', { value: n.name }, n.name)));
      host.replaceChildren(h('option', { value: '' }, inv.hosts.length > 1 ? 'any host that mounts the storage' : 'the platform\'s host'),
        ...inv.hosts.map((x) => h('option', { value: x.name }, `${x.name} (${x.cpus} CPUs, ${bytes(x.memory_mib * 1048576)})`)));
    } catch (err) {
      storage.replaceChildren();
      network.replaceChildren(h('option', { value: '' }, 'as in the point'));
      host.replaceChildren(h('option', { value: '' }, 'the platform\'s choice'));
      throw new ApiError(err.status, `platform: ${err.message}`);
    }
  };
  platform.addEventListener('change', () => loadTarget().catch(() => {}));
  const mode = () => (inPlace.checked ? 'in_place' : 'new_vm');
  const collect = () => {
    const body = { point: point.value, platform: Number(platform.value), mode: mode() };
    if (body.mode === 'new_vm') {
      body.name = name.value.trim();
      if (cpus.value) body.cpus = Number(cpus.value);
      if (memory.value) body.memory_mib = Number(memory.value);
      if (storage.value) body.storage = storage.value;
      if (network.value) body.network = network.value;
      if (host.value) body.host = host.value;
      if (format.value) body.disk_format = format.value;
      body.disk_sizes = {};
      diskInputs.forEach(({ d, shown, input }) => {
        if (input.value !== shown) body.disk_sizes[d.key] = Number(input.value) * 1048576;
      });
      body.start = start.checked;
      body.keep_macs = keepMacs.checked;
      if (conversion && conversion.needed) {
        body.disk_bus = diskBus.value;
        body.nic_model = nicModel.value;
      }
    }
    return body;
  };
  const summary = h('div');
  const drawSummary = () => {
    const b = collect();
    const rows = [['VM', vm.selectedOptions[0].textContent], ['Point', point.selectedOptions[0].textContent],
      ['Onto', platform.selectedOptions[0].textContent],
      ['How', b.mode === 'in_place' ? 'over the original VM (its disks are overwritten)' : `as a new VM named ${b.name}`]];
    if (b.mode === 'new_vm') {
      rows.push(['CPUs', b.cpus ? String(b.cpus) : 'as in the point'], ['Memory', b.memory_mib ? `${b.memory_mib} MiB` : 'as in the point'],
        ['Disks', diskInputs.map(({ d, shown, input }) => `${d.key} ${bytes(input.value === shown ? d.size : Number(input.value) * 1048576)}`).join(', ')],
        ['Host', b.host || 'the platform\'s choice'],
        [storage.previousElementSibling.textContent, b.storage || 'the platform\'s default'], ['Disk format', b.disk_format || 'the platform\'s default'],
        ['Network', b.network || 'as in the point'],
        ['MAC addresses', b.keep_macs ? 'the point\'s (the original VM must be gone)' : 'new ones (the original VM keeps its own)'],
        ['Power on after the restore', b.start ? 'yes' : 'no']);
      if (conversion && conversion.needed) {
        rows.push(['Converted', `from ${conversion.source_kind} to ${conversion.target_kind}`], ['Disk bus', b.disk_bus], ['NIC model', b.nic_model]);
      }
    }
    summary.replaceChildren(b.mode === 'in_place' ? warning.cloneNode(true) : '', h('dl', { class: 'facts' }, rows.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])));
  };
  const steps = [
    h('div', { 'data-step': 0 }, field('Platform to restore onto', platform, 'Any platform: a point of another kind of platform is converted, and you review its hardware before the summary.')),
    h('div', { 'data-step': 1 }, field('VM', vm), field('Restore point', point)),
    h('div', { 'data-step': 2 },
      h('fieldset', { class: 'field', 'data-field': 'mode' }, h('legend', {}, 'Restore'),
        choice(newVm, 'as a new VM (the original stays as it is)'),
        choice(inPlace, 'over the original VM'),
        h('small', { class: 'error', 'aria-live': 'polite' })),
      inPlaceNote, warning),
    h('div', { 'data-step': 3 }, field('Name of the new VM', name), field('CPUs', cpus, 'Empty: as in the point.'), field('Memory (MiB)', memory, 'Empty: as in the point.'),
      diskBox, field('Host', host, 'Where the VM runs; it must reach the storage.'), field('Storage', storage), field('Disk format', format), field('Network', network),
      choice(keepMacs, 'Keep the point\'s MAC addresses (by default the new VM gets new ones, so it can run beside the original)'),
      choice(start, 'Power the VM on after the restore')),
    h('div', { 'data-step': 4 }, field('Disk bus', diskBus, 'Every disk goes on this bus; the default is what the guest OS is known to boot from.'),
      field('NIC model', nicModel, 'Every NIC gets this model; the default is what the guest OS has a driver for.'), hardware),
    h('div', { 'data-step': 5 }, summary),
  ];
  let at = 0;
  const nav = h('ol', { class: 'steps' });
  const back = h('button', { type: 'button' }, 'Back');
  const next = h('button', { type: 'button', class: 'primary' }, 'Next');
  // Steps that do not apply: the new VM's and the hardware's for a restore in place, the
  // hardware's when nothing is converted.
  const skipped = (i) => (mode() === 'in_place' && (i === 3 || i === 4)) || (i === 4 && !(conversion && conversion.needed));
  const go = async (to, dir = 1) => {
    at = to;
    while (at > 0 && at < STEPS.length - 1 && skipped(at)) at += dir;
    steps.forEach((s, i) => { s.hidden = i !== at; });
    warning.hidden = mode() !== 'in_place';
    nav.replaceChildren(...STEPS.map((t, i) => (skipped(i) ? null : h('li', { 'aria-current': i === at ? 'step' : null }, t))).filter(Boolean));
    back.hidden = at === 0;
    next.hidden = at === STEPS.length - 1;
    submit.hidden = at !== STEPS.length - 1;
    if (at === STEPS.length - 1) drawSummary();
  };
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Start the restore');
  const f = form({ class: 'card wizard', 'aria-label': 'Restore a point' }, [nav, ...steps, h('div', { class: 'buttons' }, back, next, submit)], async () => {
    if (at !== STEPS.length - 1) {
      next.click();
      return;
    }
    try {
      const job = await api('POST', '/api/restores', collect());
      toast(`Restore queued as job ${job.id}.`);
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      const holder = fieldOf(f, err.message);
      const step = holder && holder.closest('[data-step]');
      if (step) await go(Number(step.dataset.step));
      throw err;
    }
  });
  inPlace.addEventListener('change', () => { warning.hidden = false; });
  newVm.addEventListener('change', () => { warning.hidden = true; });
  next.addEventListener('click', async () => {
    clearErrors(f);
    try {
      if (at === 1) await loadPoint();
      if (at === 2 && mode() === 'new_vm') await loadTarget();
      if (at === 3 && !name.value.trim()) throw new ApiError(400, 'name: the new VM needs a name');
      const shrunk = at === 3 && diskInputs.find(({ d, input }) => Number(input.value) * 1048576 < d.size);
      if (shrunk) throw new ApiError(400, `disk_sizes.${shrunk.d.key}: a disk can grow, not shrink (at least ${Math.ceil(shrunk.d.size / 1048576)} MiB)`);
      await go(at + 1, 1);
    } catch (err) {
      showError(f, err);
    }
  });
  back.addEventListener('click', () => {
    clearErrors(f);
    go(at - 1, -1);
  });
  main.append(f);
  await preselect();
  await go(0);
}
