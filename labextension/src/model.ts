// Types of what /warden/api answers, and pure formatting (no JupyterLab imports, so
// jest tests it directly).

export interface Health {
  status: string;
  gateway_id: string;
  version: string;
  mode: string;
}

export interface WhoAmI {
  subject: string;
  display_name?: string | null;
  kind?: string;
  groups: string[];
  roles: string[];
  mode: string;
  gateway_id?: string;
  approver: boolean;
  auditor?: boolean;
  connections: string[];
  note?: string;
}

export interface ApiError {
  code: string;
  message: string;
}

export interface Status {
  extension_version: string;
  gateway_url: string;
  health: Health | null;
  whoami: WhoAmI | null;
  error: ApiError | null;
}

export interface Approval {
  id: string;
  requester: string;
  connection: string;
  sql: string;
  fingerprint?: string;
  rule_ids: string[];
  reasons: string[];
  status: string;
  created_at: string;
  expires_at: string;
  uses_left?: number;
  decided_by?: string | null;
  decided_at?: string | null;
  decision_reason?: string | null;
}

export interface Approvals {
  subject: string;
  approver: boolean;
  kind?: string;
  approvals: Approval[];
}

export interface Mask {
  column?: string;
  operator?: string;
  classification?: string;
  classifications?: string[];
  rule?: string;
  rules?: string[];
  detector?: string;
}

export interface AuditEvent {
  event_id: string;
  event_time: string;
  type: string;
  session_id?: string | null;
  cell_id?: string | null;
  execution_count?: number | null;
  connection?: string | null;
  sql?: string | null;
  action?: string | null;
  rule_ids?: string[] | null;
  reasons?: string[] | null;
  masks?: Mask[] | null;
  approval_id?: string | null;
  approver?: string | null;
  status?: string | null;
  error?: string | null;
  rows?: number | null;
  duration_ms?: number | null;
  correlation_id?: string | null;
}

export interface Timeline {
  kernel_id: string;
  session_id: string;
  events: AuditEvent[];
}

/** "in 59 min", "3 s ago": how far a time is from now. */
export function relativeTime(when: string, now: number = Date.now()): string {
  const at = Date.parse(when);
  if (isNaN(at)) {
    return when;
  }
  const seconds = (at - now) / 1000;
  const span = Math.abs(seconds);
  let amount: string;
  if (span < 60) {
    amount = `${Math.round(span)} s`;
  } else if (span < 3600) {
    amount = `${Math.floor(span / 60)} min`;
  } else if (span < 172800) {
    amount = `${Math.floor(span / 3600)} h`;
  } else {
    amount = `${Math.floor(span / 86400)} days`;
  }
  return seconds >= 0 ? `in ${amount}` : `${amount} ago`;
}

export function formatDuration(ms: number | null | undefined): string {
  if (ms === null || ms === undefined) {
    return '';
  }
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** The mode as the status bar says it: local gateways are advisory. */
export function modeLabel(mode: string | undefined): string {
  if (mode === 'local') {
    return 'local (advisory)';
  }
  return mode || 'unknown';
}

/** Requests I made, and (for approvers) others' requests still to decide. */
export function splitApprovals(data: Approvals): { mine: Approval[]; queue: Approval[] } {
  const mine = data.approvals.filter(a => a.requester === data.subject);
  const queue = data.approver ? data.approvals.filter(a => a.requester !== data.subject && a.status === 'pending') : [];
  const newest = (x: Approval, y: Approval) => y.created_at.localeCompare(x.created_at);
  return { mine: mine.sort(newest), queue: queue.sort(newest) };
}

/** What a masked column's header says about its mask, from the kernel display's
 * tooltip ("masked by the warden gateway: email; classification pii.email; rule r1")
 * or a content detector's ("...: content detector email found values in 3 row(s)"). */
export interface MaskInfo {
  operator: string;
  classification: string;
  rule: string;
  detector: string;
}

export function parseMaskTitle(title: string): MaskInfo {
  const info: MaskInfo = { operator: '', classification: '', rule: '', detector: '' };
  const body = title.replace(/^masked by the warden gateway:\s*/, '');
  const detector = /content detector (\S+)/.exec(body);
  if (detector) {
    info.detector = detector[1];
    info.operator = `detector:${detector[1]}`;
    return info;
  }
  body.split(';').forEach((part, i) => {
    const text = part.trim();
    if (i === 0) {
      info.operator = text;
    } else if (text.startsWith('classification ')) {
      info.classification = text.slice('classification '.length);
    } else if (text.startsWith('rule ')) {
      info.rule = text.slice('rule '.length);
    } else if (text.startsWith('detector ')) {
      info.detector = text.slice('detector '.length);
    }
  });
  return info;
}

export function maskTooltip(info: MaskInfo): string {
  if (info.detector && info.operator.startsWith('detector:')) {
    return `Masked by a content detector (${info.detector}): lineage did not classify this column, its values did`;
  }
  const lines = [`Masked: operator ${info.operator || '?'}`];
  if (info.classification) {
    lines.push(`classification ${info.classification}`);
  }
  if (info.rule) {
    lines.push(`rule ${info.rule}`);
  }
  return lines.join('\n');
}

export type CellState = 'held' | 'denied' | 'approved' | '';

/** A cell's warden state from its output messages (class names the kernel's display
 * puts on them: warden-held, warden-denied, warden-ok), in output order. */
export function cellStateFrom(messages: { kind: string; title: string }[]): CellState {
  // The titles decide too: the display also draws a failed query or an unreachable
  // gateway in these colours, and those are neither held nor denied by the policy.
  let state: CellState = '';
  for (const m of messages) {
    if (m.kind === 'held' && /held for approval/i.test(m.title)) {
      state = 'held';
    } else if (m.kind === 'denied' && /^(The policy does not allow|Approval refused)/.test(m.title)) {
      state = 'denied';
    } else if (m.kind === 'ok' && /^Approved by/.test(m.title)) {
      state = 'approved';
    }
  }
  return state;
}

/** One timeline entry's summary line. */
export function describeEvent(e: AuditEvent): { title: string; detail: string; decision: string } {
  const parts: string[] = [];
  const masks = (Array.isArray(e.masks) ? e.masks : []).map(m => m.column || '?');
  if (e.type === 'cell.execute') {
    const run = e.execution_count !== null && e.execution_count !== undefined ? `[${e.execution_count}]` : '[ ]';
    return {
      title: `cell ${run}`,
      detail: [e.status || '', formatDuration(e.duration_ms)].filter(Boolean).join(' · '),
      decision: e.status === 'error' ? 'error' : 'cell'
    };
  }
  if (e.connection) {
    parts.push(e.connection);
  }
  if (masks.length) {
    parts.push(`masked: ${masks.join(', ')}`);
  }
  if (e.rows !== null && e.rows !== undefined && e.type.startsWith('query.') && e.type !== 'query.held') {
    parts.push(`${e.rows} row${e.rows === 1 ? '' : 's'}`);
  }
  if (e.duration_ms) {
    parts.push(formatDuration(e.duration_ms));
  }
  if (e.approval_id) {
    parts.push(`approval ${e.approval_id}${e.approver ? ' by ' + e.approver : ''}`);
  }
  if (e.rule_ids && e.rule_ids.length && (e.type === 'query.held' || e.type === 'query.denied')) {
    parts.push(`rules: ${e.rule_ids.join(', ')}`);
  }
  if (e.error) {
    parts.push(e.error);
  }
  return { title: e.type, detail: parts.join(' · '), decision: decisionOf(e) };
}

/** The pill of an entry: what happened at that step (the cell's decision stays "hold"
 * on the records after an approval, so the type says more). */
export function decisionOf(e: AuditEvent): string {
  const kind = e.type.split('.').slice(1).join('.');
  if (e.type === 'query.allowed' || e.type === 'query.masked') {
    return e.approval_id ? 'approved' : kind;
  }
  if (e.type === 'query.executed') {
    return e.status && !['ok', 'success'].includes(e.status) ? 'failed' : 'executed';
  }
  if (e.type.startsWith('query.') || e.type.startsWith('approval.')) {
    return kind;
  }
  return e.type.split('.')[0];
}
