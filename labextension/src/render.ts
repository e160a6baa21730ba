// DOM rendering of the panels and markers, with document APIs only (no JupyterLab
// imports), so jest renders them in jsdom. Text always goes in with textContent:
// everything shown came from the gateway, and nothing of it is markup.

import {
  Approval,
  Approvals,
  AuditEvent,
  CellState,
  Status,
  cellStateFrom,
  describeEvent,
  maskTooltip,
  modeLabel,
  parseMaskTitle,
  relativeTime,
  splitApprovals
} from './model';

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  cls = '',
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (cls) {
    node.className = cls;
  }
  if (text) {
    node.textContent = text;
  }
  return node;
}

// -- status bar --------------------------------------------------------------------------

export type Health = 'ok' | 'down' | 'unknown';

export function statusHealth(s: Status | null): Health {
  if (!s) {
    return 'unknown';
  }
  return s.health && s.health.status === 'ok' && !s.error ? 'ok' : 'down';
}

/** The status bar's text: "warden: ana (analysts) · shared". */
export function statusText(s: Status | null): string {
  if (!s) {
    return 'warden: …';
  }
  if (!s.whoami) {
    return 'warden: gateway unreachable';
  }
  const w = s.whoami;
  const groups = w.groups.length ? ` (${w.groups.join(', ')})` : '';
  return `warden: ${w.subject}${groups} · ${modeLabel(w.mode)}`;
}

export function renderStatusItem(node: HTMLElement, s: Status | null): void {
  node.replaceChildren();
  node.classList.add('warden-status');
  const health = statusHealth(s);
  node.dataset.health = health;
  const dot = el('span', `warden-health-dot warden-health-${health}`);
  dot.title = health === 'ok' ? 'gateway healthy' : health === 'down' ? 'gateway unreachable' : 'checking';
  node.append(dot, el('span', 'warden-status-text', statusText(s)));
}

export function renderStatusPopover(node: HTMLElement, s: Status | null): void {
  node.replaceChildren();
  node.classList.add('warden-popover');
  node.append(el('h3', '', 'warden'));
  const rows: [string, string][] = [];
  const w = s?.whoami;
  if (w) {
    rows.push(['user', w.display_name ? `${w.subject} (${w.display_name})` : w.subject]);
    if (w.kind) {
      rows.push(['kind', w.kind]);
    }
    rows.push(['groups', w.groups.join(', ') || '—']);
    rows.push(['roles', w.roles.join(', ') || '—']);
    rows.push(['approver', w.approver ? 'yes' : 'no']);
    rows.push(['connections', w.connections.join(', ') || '—']);
    rows.push(['mode', modeLabel(w.mode)]);
  }
  rows.push(['gateway', s?.gateway_url || '—']);
  if (s?.health) {
    rows.push(['gateway id', s.health.gateway_id]);
    rows.push(['version', s.health.version]);
  }
  rows.push(['health', statusHealth(s)]);
  const table = el('table', 'warden-kv');
  for (const [k, v] of rows) {
    const tr = el('tr');
    tr.dataset.key = k;
    tr.append(el('th', '', k), el('td', '', v));
    table.append(tr);
  }
  node.append(table);
  if (s?.error) {
    node.append(el('div', 'warden-error', s.error.message));
  }
  if (w?.note) {
    node.append(el('div', 'warden-note', w.note));
  }
}

// -- approvals ---------------------------------------------------------------------------

export interface Decide {
  (approval: Approval, approve: boolean, reason: string): Promise<string | null>; // null: done, else an error
}

function approvalCard(a: Approval, now: number, decide: Decide | null): HTMLElement {
  const card = el('div', 'warden-approval');
  card.dataset.approvalId = a.id;
  card.dataset.status = a.status;
  const head = el('div', 'warden-approval-head');
  head.append(el('span', `warden-pill warden-pill-${a.status}`, a.status), el('code', 'warden-approval-id', a.id));
  card.append(head);
  const meta = el('div', 'warden-approval-meta');
  const expires = a.status === 'pending' ? `expires ${relativeTime(a.expires_at, now)}` : '';
  const decided = a.decided_by ? `${a.status} by ${a.decided_by}${a.decision_reason ? ': ' + a.decision_reason : ''}` : '';
  meta.textContent = [`${a.requester} on ${a.connection}`, `asked ${relativeTime(a.created_at, now)}`, expires, decided]
    .filter(Boolean)
    .join(' · ');
  card.append(meta);
  if (a.rule_ids.length) {
    card.append(el('div', 'warden-approval-rules', `rules: ${a.rule_ids.join(', ')}`));
  }
  for (const reason of a.reasons) {
    card.append(el('div', 'warden-approval-reason', reason));
  }
  card.append(el('pre', 'warden-sql', a.sql));
  if (decide) {
    card.append(decisionControls(a, decide));
  }
  return card;
}

/** Approve / Deny, each asking for a reason before anything is sent. */
function decisionControls(a: Approval, decide: Decide): HTMLElement {
  const box = el('div', 'warden-decide');
  const approve = el('button', 'warden-button warden-approve', 'Approve');
  const deny = el('button', 'warden-button warden-deny', 'Deny');
  const form = el('form', 'warden-reason-form');
  form.hidden = true;
  const input = el('input', 'warden-reason');
  input.placeholder = 'Reason (recorded in the audit log)';
  input.required = true;
  const confirm = el('button', 'warden-button warden-confirm', 'Confirm');
  confirm.type = 'submit';
  const cancel = el('button', 'warden-button warden-cancel', 'Cancel');
  cancel.type = 'button';
  const error = el('div', 'warden-error');
  form.append(input, confirm, cancel);
  let approving = true;
  const ask = (yes: boolean) => {
    approving = yes;
    form.hidden = false;
    form.dataset.verb = yes ? 'approve' : 'deny';
    confirm.textContent = yes ? 'Confirm approval' : 'Confirm denial';
    input.focus();
  };
  approve.type = 'button';
  deny.type = 'button';
  approve.addEventListener('click', () => ask(true));
  deny.addEventListener('click', () => ask(false));
  cancel.addEventListener('click', () => {
    form.hidden = true;
    error.textContent = '';
  });
  form.addEventListener('submit', ev => {
    ev.preventDefault();
    const reason = input.value.trim();
    if (!reason) {
      error.textContent = 'A reason is required.';
      return;
    }
    confirm.disabled = true;
    void decide(a, approving, reason).then(problem => {
      confirm.disabled = false;
      if (problem) {
        error.textContent = problem;
      } else {
        form.hidden = true;
        box.dataset.decided = approving ? 'approved' : 'denied';
      }
    });
  });
  box.append(approve, deny, form, error);
  return box;
}

export function renderApprovals(
  node: HTMLElement,
  data: Approvals | null,
  error: string,
  decide: Decide,
  now: number = Date.now()
): void {
  node.replaceChildren();
  node.classList.add('warden-approvals');
  node.append(el('h2', '', 'Approvals'));
  if (error) {
    node.append(el('div', 'warden-error', error));
  }
  if (!data) {
    return;
  }
  const { mine, queue } = splitApprovals(data);
  if (data.approver) {
    const section = el('section', 'warden-queue');
    section.append(el('h3', '', `To decide (${queue.length})`));
    if (!queue.length) {
      section.append(el('div', 'warden-empty', 'Nothing waits for you.'));
    }
    const canDecide = data.kind !== 'service';
    for (const a of queue) {
      section.append(approvalCard(a, now, canDecide ? decide : null));
    }
    node.append(section);
  }
  const section = el('section', 'warden-mine');
  section.append(el('h3', '', `My requests (${mine.length})`));
  if (!mine.length) {
    section.append(el('div', 'warden-empty', 'No approval requests.'));
  }
  for (const a of mine) {
    section.append(approvalCard(a, now, null)); // never one's own: the gateway refuses it too
  }
  node.append(section);
}

// -- timeline ---------------------------------------------------------------------------

export function renderTimeline(
  node: HTMLElement,
  events: AuditEvent[] | null,
  heading: string,
  error: string,
  onSelect: (e: AuditEvent) => void
): void {
  node.replaceChildren();
  node.classList.add('warden-timeline');
  node.append(el('h2', '', 'Audit timeline'));
  node.append(el('div', 'warden-timeline-notebook', heading));
  if (error) {
    node.append(el('div', 'warden-error', error));
  }
  if (!events) {
    return;
  }
  const shown = events.filter(e => e.type !== 'session.start' && e.type !== 'query.submitted');
  if (!shown.length) {
    node.append(el('div', 'warden-empty', 'No audited cells in this session yet.'));
    return;
  }
  const list = el('ol', 'warden-events');
  for (const e of shown) {
    const { title, detail, decision } = describeEvent(e);
    const item = el('li', `warden-event warden-decision-${decision}`);
    item.dataset.type = e.type;
    item.dataset.cellId = e.cell_id || '';
    item.dataset.eventId = e.event_id;
    const time = e.event_time ? new Date(e.event_time) : null;
    item.append(
      el('span', 'warden-event-time', time && !isNaN(time.getTime()) ? time.toLocaleTimeString() : ''),
      el('span', `warden-pill warden-pill-${decision}`, decision),
      el('span', 'warden-event-title', title),
      el('span', 'warden-event-detail', detail)
    );
    if (e.cell_id) {
      item.classList.add('warden-clickable');
      item.title = 'Scroll to the cell';
      item.addEventListener('click', () => onSelect(e));
    }
    list.append(item);
  }
  node.append(list);
}

// -- markers in notebooks ----------------------------------------------------------------

/** Mark masked column headers (the kernel's display: th.warden-masked with a title)
 * with an icon and a tooltip; detector-masked columns get their own icon. Idempotent. */
export function decorateMasks(root: ParentNode): number {
  let changed = 0;
  root.querySelectorAll<HTMLElement>('th.warden-masked').forEach(th => {
    if (th.querySelector('.warden-mask-icon')) {
      return;
    }
    const title = th.getAttribute('title') || th.dataset.wardenTitle || '';
    const info = parseMaskTitle(title);
    const icon = el('span', 'warden-mask-icon');
    icon.setAttribute('role', 'img');
    icon.setAttribute('aria-label', info.detector ? 'masked by a content detector' : 'masked');
    if (info.detector && info.operator.startsWith('detector:')) {
      icon.classList.add('warden-mask-detector');
    }
    icon.dataset.operator = info.operator;
    icon.dataset.classification = info.classification;
    icon.dataset.rule = info.rule;
    icon.dataset.detector = info.detector;
    const tip = maskTooltip(info);
    th.dataset.wardenTitle = title;
    th.setAttribute('title', tip);
    icon.title = tip;
    th.insertBefore(icon, th.firstChild);
    changed++;
  });
  return changed;
}

/** The warden state of one cell node from its outputs' messages. */
export function cellState(cell: Element): CellState {
  const messages: { kind: string; title: string }[] = [];
  cell.querySelectorAll('.warden-message').forEach(m => {
    const kind = ['held', 'denied', 'ok', 'error', 'info'].find(k => m.classList.contains(`warden-${k}`)) || '';
    const title = m.querySelector('b')?.textContent || '';
    messages.push({ kind, title });
  });
  return cellStateFrom(messages);
}

const BADGE_TEXT: Record<string, string> = { held: 'held', denied: 'denied', approved: 'approved' };

/** Put (or take away) the held / denied / approved badge in a cell's prompt area. */
export function decorateCell(cell: Element): boolean {
  const state = cellState(cell);
  const prompt = cell.querySelector('.jp-InputArea-prompt') || cell.querySelector('.jp-InputPrompt');
  if (!prompt) {
    return false;
  }
  const current = prompt.querySelector<HTMLElement>('.warden-cell-badge');
  if ((current?.dataset.state || '') === state) {
    return false;
  }
  current?.remove();
  if (state) {
    const badge = el('span', `warden-cell-badge warden-cell-${state}`, BADGE_TEXT[state]);
    badge.dataset.state = state;
    badge.title =
      state === 'held'
        ? 'warden: held for approval; nothing ran yet'
        : state === 'denied'
          ? 'warden: denied; nothing ran'
          : 'warden: approved and run';
    prompt.append(badge);
  }
  return true;
}

export function decorateNotebook(root: Element): void {
  decorateMasks(root);
  root.querySelectorAll('.jp-Cell').forEach(cell => decorateCell(cell));
}
