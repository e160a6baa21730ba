import { Approvals, Status } from '../src/model';
import {
  cellState,
  decorateCell,
  decorateMasks,
  renderApprovals,
  renderStatusItem,
  renderStatusPopover,
  renderTimeline,
  statusText
} from '../src/render';

const STATUS: Status = {
  extension_version: '0.1.0',
  gateway_url: 'http://127.0.0.1:8787',
  health: { status: 'ok', gateway_id: 'gw-1', version: '0.1.0', mode: 'shared' },
  whoami: {
    subject: 'ana',
    groups: ['analysts'],
    roles: ['analyst'],
    mode: 'shared',
    approver: false,
    connections: ['pg', 'dk'],
    kind: 'human'
  },
  error: null
};

describe('status bar', () => {
  it('shows user, groups, mode and health', () => {
    const node = document.createElement('div');
    renderStatusItem(node, STATUS);
    expect(node.textContent).toBe('warden: ana (analysts) · shared');
    expect(node.dataset.health).toBe('ok');
    expect(statusText({ ...STATUS, whoami: { ...STATUS.whoami!, mode: 'local', groups: [] } })).toBe(
      'warden: ana · local (advisory)'
    );
  });
  it('says when the gateway is unreachable', () => {
    const node = document.createElement('div');
    renderStatusItem(node, { ...STATUS, health: null, whoami: null, error: { code: 'unavailable', message: 'down' } });
    expect(node.dataset.health).toBe('down');
    expect(node.textContent).toContain('gateway unreachable');
  });
  it('lists roles, connections, URL and version in the popover', () => {
    const node = document.createElement('div');
    renderStatusPopover(node, STATUS);
    const row = (k: string) => node.querySelector(`tr[data-key="${k}"] td`)?.textContent;
    expect(row('roles')).toBe('analyst');
    expect(row('connections')).toBe('pg, dk');
    expect(row('gateway')).toBe('http://127.0.0.1:8787');
    expect(row('version')).toBe('0.1.0');
  });
});

const APPROVALS: Approvals = {
  subject: 'olga',
  approver: true,
  kind: 'human',
  approvals: [
    {
      id: 'apr_1',
      requester: 'ana',
      connection: 'pg',
      sql: "SELECT email FROM customers WHERE email = '***' <script>x</script>",
      rule_ids: ['role:analyst/classified_in_predicates'],
      reasons: ['classified column email in a predicate'],
      status: 'pending',
      created_at: new Date(Date.now() - 5000).toISOString(),
      expires_at: new Date(Date.now() + 3570000).toISOString()
    },
    {
      id: 'apr_2',
      requester: 'olga',
      connection: 'pg',
      sql: 'SELECT 1',
      rule_ids: [],
      reasons: [],
      status: 'pending',
      created_at: new Date().toISOString(),
      expires_at: new Date(Date.now() + 60000).toISOString()
    }
  ]
};

describe('approvals panel', () => {
  it('shows the queue with buttons and my own requests without', () => {
    const node = document.createElement('div');
    renderApprovals(node, APPROVALS, '', async () => null);
    const queue = node.querySelector('.warden-queue')!;
    expect(queue.querySelectorAll('.warden-approval')).toHaveLength(1);
    const card = queue.querySelector('[data-approval-id="apr_1"]')!;
    expect(card.querySelector('.warden-approve')).not.toBeNull();
    expect(card.textContent).toContain('expires in 59 min');
    expect(card.querySelector('.warden-sql')!.textContent).toContain('<script>x</script>'); // text, not markup
    expect(card.querySelector('script')).toBeNull();
    const mine = node.querySelector('.warden-mine [data-approval-id="apr_2"]')!;
    expect(mine.querySelector('button')).toBeNull(); // never one's own
  });

  it('asks for a reason before deciding, then sends it', async () => {
    const node = document.createElement('div');
    const calls: [string, boolean, string][] = [];
    renderApprovals(node, APPROVALS, '', async (a, approve, reason) => {
      calls.push([a.id, approve, reason]);
      return null;
    });
    const card = node.querySelector('[data-approval-id="apr_1"]')!;
    const form = card.querySelector('form')! as HTMLFormElement;
    expect(form.hidden).toBe(true);
    (card.querySelector('.warden-approve') as HTMLButtonElement).click();
    expect(form.hidden).toBe(false);
    form.dispatchEvent(new Event('submit', { cancelable: true }));
    expect(card.querySelector('.warden-error')!.textContent).toBe('A reason is required.');
    expect(calls).toEqual([]);
    (card.querySelector('input.warden-reason') as HTMLInputElement).value = 'ticket 42';
    form.dispatchEvent(new Event('submit', { cancelable: true }));
    await new Promise(r => setTimeout(r, 0));
    expect(calls).toEqual([['apr_1', true, 'ticket 42']]);
    expect((card.querySelector('.warden-decide') as HTMLElement).dataset.decided).toBe('approved');
  });

  it('shows what the gateway said when it refuses', async () => {
    const node = document.createElement('div');
    renderApprovals(node, APPROVALS, '', async () => 'you cannot approve your own request');
    const card = node.querySelector('[data-approval-id="apr_1"]')!;
    (card.querySelector('.warden-deny') as HTMLButtonElement).click();
    (card.querySelector('input.warden-reason') as HTMLInputElement).value = 'no';
    card.querySelector('form')!.dispatchEvent(new Event('submit', { cancelable: true }));
    await new Promise(r => setTimeout(r, 0));
    expect(card.querySelector('.warden-error')!.textContent).toBe('you cannot approve your own request');
  });

  it('gives a service account no buttons and a non-approver no queue', () => {
    const node = document.createElement('div');
    renderApprovals(node, { ...APPROVALS, kind: 'service' }, '', async () => null);
    expect(node.querySelector('.warden-approve')).toBeNull();
    renderApprovals(node, { ...APPROVALS, approver: false }, '', async () => null);
    expect(node.querySelector('.warden-queue')).toBeNull();
  });
});

describe('timeline', () => {
  it('lists cells and queries in order and scrolls on click', () => {
    const node = document.createElement('div');
    const picked: string[] = [];
    renderTimeline(
      node,
      [
        { event_id: 's', event_time: '2026-12-02T04:00:00Z', type: 'session.start' },
        { event_id: 'h', event_time: '2026-12-02T04:00:01Z', type: 'query.held', action: 'hold', cell_id: 'c1' },
        { event_id: 'x', event_time: '2026-12-02T04:00:05Z', type: 'query.executed', action: 'mask', rows: 2, cell_id: 'c1', masks: [{ column: 'email' }] },
        { event_id: 'c', event_time: '2026-12-02T04:00:06Z', type: 'cell.execute', execution_count: 1, status: 'ok', cell_id: 'c1' }
      ],
      'analysis.ipynb',
      '',
      e => picked.push(e.event_id)
    );
    const items = Array.from(node.querySelectorAll('li.warden-event')) as HTMLElement[];
    expect(items.map(i => i.dataset.type)).toEqual(['query.held', 'query.executed', 'cell.execute']);
    expect(items[1].textContent).toContain('masked: email');
    items[0].click();
    expect(picked).toEqual(['h']);
  });
});

function cellWithOutput(html: string): HTMLElement {
  const cell = document.createElement('div');
  cell.className = 'jp-Cell';
  cell.innerHTML = `<div class="jp-InputArea"><div class="jp-InputArea-prompt">[1]:</div></div><div class="jp-OutputArea">${html}</div>`;
  return cell;
}

describe('markers', () => {
  it('badges held, approved and denied cells in the prompt area', () => {
    const held = cellWithOutput('<div class="warden-message warden-held"><div><b>Held for approval</b></div></div>');
    expect(decorateCell(held)).toBe(true);
    expect(held.querySelector('.jp-InputArea-prompt .warden-cell-badge')!.textContent).toBe('held');
    expect(decorateCell(held)).toBe(false); // idempotent: no DOM churn for the observer
    held.querySelector('.jp-OutputArea')!.innerHTML =
      '<div class="warden-message warden-ok"><div><b>Approved by olga — running the cell</b></div></div>';
    decorateCell(held);
    expect(held.querySelectorAll('.warden-cell-badge')).toHaveLength(1);
    expect(cellState(held)).toBe('approved');
    const denied = cellWithOutput('<div class="warden-message warden-denied"><div><b>The policy does not allow this — nothing ran</b></div></div>');
    decorateCell(denied);
    expect(denied.querySelector('.warden-cell-badge')!.className).toContain('warden-cell-denied');
    const plain = cellWithOutput('<pre>42</pre>');
    expect(decorateCell(plain)).toBe(false);
    expect(plain.querySelector('.warden-cell-badge')).toBeNull();
  });

  it('puts an icon and a tooltip on masked columns, a different one for detectors', () => {
    const root = document.createElement('div');
    root.innerHTML =
      '<table><thead><tr><th>id</th>' +
      '<th class="warden-masked" title="masked by the warden gateway: email; classification pii.email; rule r/email">email<span class="warden-mask-badge">masked</span></th>' +
      '<th class="warden-masked" title="masked by the warden gateway: content detector ssn found values in 2 row(s)">note</th>' +
      '</tr></thead></table>';
    expect(decorateMasks(root)).toBe(2);
    expect(decorateMasks(root)).toBe(0);
    const [email, note] = Array.from(root.querySelectorAll('th.warden-masked')) as HTMLElement[];
    const icon = email.querySelector('.warden-mask-icon') as HTMLElement;
    expect(icon.dataset.operator).toBe('email');
    expect(icon.dataset.classification).toBe('pii.email');
    expect(icon.dataset.rule).toBe('r/email');
    expect(email.title).toContain('rule r/email');
    expect(icon.textContent).toBe(''); // an SVG mask in CSS, no glyph
    expect(note.querySelector('.warden-mask-icon')!.classList.contains('warden-mask-detector')).toBe(true);
  });
});
