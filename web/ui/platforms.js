// Platforms: the hypervisors the appliance backs up. Each kind's settings form is the one the
// API describes (GET /api/platform-kinds), so a new kind of platform brings its own form and
// this page does not change. A platform is saved only when its connection test passes; the
// test's own error is shown under the field it names, or above the buttons.
import { api, h, heading, field, form, may, table, toast, bytes } from './app.js';

function settingsSummary(p, kind) {
  if (!kind) return '';
  // Where the platform is: its required settings (a URI, a host); the optional ones (a
  // thumbprint, a CA file…) are in its form.
  return kind.fields.filter((f) => f.required && p[f.name]).map((f) => `${f.label}: ${p[f.name]}`).join(' · ');
}

function kindForm(kinds, existing, done) {
  const kindSelect = h('select', { name: 'kind', disabled: Boolean(existing) },
    kinds.map((k) => h('option', { value: k.kind, selected: existing && existing.kind === k.kind }, k.title)));
  const name = h('input', { name: 'name', value: existing ? existing.name : '', autocomplete: 'off', required: true });
  const username = h('input', { name: 'username', value: existing ? existing.username || '' : '', autocomplete: 'off' });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'new-password' });
  const settingsBox = h('div', { class: 'settings' });
  let inputs = [];
  const drawSettings = () => {
    const kind = kinds.find((k) => k.kind === kindSelect.value);
    inputs = kind.fields.map((f) => {
      const input = h('input', {
        name: f.name, placeholder: f.example, required: f.required, autocomplete: 'off',
        value: existing && existing[f.name] !== undefined ? existing[f.name] : '',
      });
      return { f, input };
    });
    settingsBox.replaceChildren(...inputs.map(({ f, input }) => field(f.required ? f.label : `${f.label} (optional)`, input, f.help)));
  };
  kindSelect.addEventListener('change', drawSettings);
  drawSettings();
  return form({ class: 'card', 'aria-label': existing ? `Edit platform ${existing.name}` : 'Add a platform' }, [
    h('h2', {}, existing ? `Edit ${existing.name}` : 'Add a platform'),
    field('Kind', kindSelect),
    field('Name', name, 'How Holdfast names this platform in rules, jobs and points.'),
    settingsBox,
    field('User name (optional)', username),
    field('Password (optional)', password, existing && existing.has_password ? 'A password is stored; leave empty to keep it.' : null),
    h('div', { class: 'buttons' },
      h('button', { type: 'submit', class: 'primary' }, 'Test connection and save'),
      h('button', { type: 'button', onclick: () => done(null) }, 'Cancel')),
  ], async () => {
    const body = { name: name.value.trim(), kind: kindSelect.value };
    inputs.forEach(({ f, input }) => {
      if (input.value.trim() !== '') body[f.name] = input.value.trim();
    });
    if (username.value.trim()) body.username = username.value.trim();
    if (password.value) body.password = password.value;
    const saved = existing
      ? await api('PUT', `/api/platforms/${existing.id}`, body)
      : await api('POST', '/api/platforms', body);
    done(saved);
  });
}

async function list(main) {
  const [platforms, kinds] = await Promise.all([api('GET', '/api/platforms'), api('GET', '/api/platform-kinds')]);
  const kindOf = (p) => kinds.find((k) => k.kind === p.kind);
  const slot = h('div');
  const reload = () => {
    main.replaceChildren();
    list(main);
  };
  const open = (existing) => {
    const f = kindForm(kinds, existing, (saved) => {
      if (saved) toast(`Platform ${saved.name} saved: its connection test passed.`);
      reload();
    });
    slot.replaceChildren(f);
    f.querySelector('input[name=name]').focus();
  };
  const remove = async (p) => {
    // A confirmation names the platform; the API refuses while a rule, job or point needs it.
    if (!window.confirm(`Remove platform ${p.name}? Its points stay in the store.`)) return;
    try {
      await api('DELETE', `/api/platforms/${p.id}`);
      toast(`Platform ${p.name} removed.`);
      reload();
    } catch (err) {
      slot.replaceChildren(h('p', { class: 'form-error', role: 'alert' }, err.message));
    }
  };
  main.append(
    heading('Platforms', may('admin') ? h('button', { type: 'button', class: 'primary', onclick: () => open(null) }, 'Add platform') : null),
    slot,
    platforms.length === 0
      ? h('p', { class: 'empty' }, may('admin') ? 'No platform yet: add the first hypervisor Holdfast should back up.' : 'No platform yet.')
      : table(['Name', 'Kind', 'Where', 'Last reached', ''], platforms.map((p) => h('tr', {},
        h('td', {}, h('a', { href: `#/platforms/${p.id}` }, p.name)),
        h('td', {}, kindOf(p) ? kindOf(p).title : p.kind),
        h('td', { class: 'wrap' }, settingsSummary(p, kindOf(p))),
        h('td', { class: 'wrap' }, p.reached || '–'),
        h('td', { class: 'row-actions' },
          h('a', { href: `#/platforms/${p.id}`, class: 'button' }, 'Inventory'),
          may('admin') ? h('button', { type: 'button', onclick: () => open(p), 'aria-label': `Edit ${p.name}` }, 'Edit') : null,
          may('admin') ? h('button', { type: 'button', class: 'danger', onclick: () => remove(p), 'aria-label': `Remove ${p.name}` }, 'Remove') : null))), 'Platforms'),
  );
}

async function inventory(main, id) {
  const [platforms, kinds] = await Promise.all([api('GET', '/api/platforms'), api('GET', '/api/platform-kinds')]);
  const p = platforms.find((x) => String(x.id) === id);
  if (!p) {
    main.append(heading('Platform'), h('p', { class: 'form-error', role: 'alert' }, `No platform ${id}.`));
    return;
  }
  const kind = kinds.find((k) => k.kind === p.kind);
  const storageWord = kind ? kind.capabilities.storage_word : 'storage';
  const box = h('div', { 'aria-busy': 'true' }, h('p', { class: 'muted' }, `Asking ${p.name} for its inventory…`));
  main.append(heading(`${p.name}: inventory`,
    h('button', { type: 'button', onclick: () => fill() }, 'Refresh'),
    h('a', { href: '#/platforms', class: 'button' }, 'All platforms')), box);
  const backup = async (vm, type, button) => {
    button.disabled = true;
    try {
      const job = await api('POST', '/api/jobs', { platform: p.id, vm: vm.name, type });
      toast(`Backup of ${vm.name} queued as job ${job.id}.`);
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      box.prepend(h('p', { class: 'form-error', role: 'alert' }, `${vm.name}: ${err.message}`));
      button.disabled = false;
    }
  };
  const details = async (vm, cell, button) => {
    button.disabled = true;
    try {
      const d = await api('GET', `/api/platforms/${p.id}/vms/${encodeURIComponent(vm.uuid || vm.name)}`);
      cell.replaceChildren(h('span', { class: 'small' },
        `${d.cpus} CPU · ${bytes(d.memory_mib * 1048576)} memory · `,
        d.disks.map((x) => `${x.key} ${bytes(x.size)}`).join(', '),
        d.nics.length ? ` · NIC ${d.nics.map((n) => n.network || n.mac || '?').join(', ')}` : ''));
    } catch (err) {
      cell.replaceChildren(h('span', { class: 'error-text' }, err.message));
    }
  };
  const vmRow = (vm) => {
    const type = h('select', { 'aria-label': `Backup type for ${vm.name}` },
      ['incremental', 'full', 'differential'].map((t) => h('option', { value: t }, t)));
    const more = h('td', { class: 'small' });
    const show = h('button', { type: 'button', 'aria-label': `Disks of ${vm.name}`, onclick: (e) => details(vm, more, e.target) }, 'Disks');
    more.append(show);
    return h('tr', { 'data-vm': vm.uuid },
      h('td', {}, vm.name),
      h('td', {}, vm.running ? 'running' : 'shut off'),
      more,
      may('operate') ? h('td', { class: 'row-actions' }, type,
        h('button', { type: 'button', onclick: (e) => backup(vm, type.value, e.target), 'aria-label': `Back up ${vm.name}` }, 'Back up')) : null);
  };
  const fill = async () => {
    box.setAttribute('aria-busy', 'true');
    try {
      const inv = await api('GET', `/api/platforms/${p.id}/inventory`);
      box.replaceChildren(
        h('h2', {}, 'Hosts'),
        table(['Host', 'Software', 'CPUs', 'Memory'], inv.hosts.map((x) => h('tr', {},
          h('td', {}, x.name), h('td', {}, x.software), h('td', {}, String(x.cpus)), h('td', {}, bytes(x.memory_mib * 1048576)))), 'Hosts'),
        h('h2', {}, 'Virtual machines'),
        inv.vms.length === 0 ? h('p', { class: 'empty' }, 'This platform has no VMs.')
          : table(['VM', 'Power', 'Details', may('operate') ? 'Back up now' : null].filter(Boolean), inv.vms.map(vmRow), `VMs of ${p.name}`),
        h('h2', {}, 'Networks'),
        inv.networks.length === 0 ? h('p', { class: 'empty' }, 'No networks.')
          : table(['Network', 'State'], inv.networks.map((n) => h('tr', {}, h('td', {}, n.name), h('td', {}, n.active ? 'active' : 'inactive'))), 'Networks'),
        h('h2', {}, storageWord.charAt(0).toUpperCase() + storageWord.slice(1)),
        inv.storage.length === 0 ? h('p', { class: 'empty' }, `No ${storageWord}.`)
          : table([storageWord, 'State', 'Capacity', 'Available'], inv.storage.map((x) => h('tr', {},
            h('td', {}, x.name), h('td', {}, x.active ? 'active' : 'inactive'), h('td', {}, bytes(x.capacity)), h('td', {}, bytes(x.available)))), storageWord));
    } catch (err) {
      box.replaceChildren(h('p', { class: 'form-error', role: 'alert' }, `${p.name}: ${err.message}`));
    }
    box.removeAttribute('aria-busy');
  };
  await fill();
}

export async function render(main, { params }) {
  if (params[0]) await inventory(main, params[0]);
  else await list(main);
}
