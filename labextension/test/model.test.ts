import { cellStateFrom, describeEvent, maskTooltip, modeLabel, parseMaskTitle, relativeTime, splitApprovals } from '../src/model';

const NOW = Date.parse('2026-12-02T04:00:00Z');

describe('relativeTime', () => {
  it('says how far ahead or behind a time is', () => {
    expect(relativeTime('2026-12-02T04:59:00Z', NOW)).toBe('in 59 min');
    expect(relativeTime('2026-12-02T03:59:30Z', NOW)).toBe('30 s ago');
    expect(relativeTime('2026-12-02T07:00:00+00:00', NOW)).toBe('in 3 h');
    expect(relativeTime('not a time', NOW)).toBe('not a time');
  });
});

describe('modeLabel', () => {
  it('calls local mode advisory', () => {
    expect(modeLabel('local')).toBe('local (advisory)');
    expect(modeLabel('shared')).toBe('shared');
  });
});

describe('splitApprovals', () => {
  const base = { connection: 'pg', sql: 'SELECT 1', rule_ids: [], reasons: [], expires_at: '', fingerprint: '' };
  const items = [
    { ...base, id: 'a1', requester: 'ana', status: 'pending', created_at: '2026-12-02T03:00:00Z' },
    { ...base, id: 'a2', requester: 'bob', status: 'pending', created_at: '2026-12-02T03:01:00Z' },
    { ...base, id: 'a3', requester: 'bob', status: 'approved', created_at: '2026-12-02T03:02:00Z' },
    { ...base, id: 'a4', requester: 'ana', status: 'approved', created_at: '2026-12-02T03:03:00Z' }
  ];
  it('gives an approver only others\u2019 pending requests to decide', () => {
    const { mine, queue } = splitApprovals({ subject: 'ana', approver: true, approvals: items });
    expect(mine.map(a => a.id)).toEqual(['a4', 'a1']);
    expect(queue.map(a => a.id)).toEqual(['a2']);
  });
  it('gives a non-approver no queue', () => {
    expect(splitApprovals({ subject: 'ana', approver: false, approvals: items }).queue).toEqual([]);
  });
});

describe('parseMaskTitle', () => {
  it('reads operator, classification and rule from the display tooltip', () => {
    const info = parseMaskTitle(
      'masked by the warden gateway: email; classification pii.email; rule role:analyst/masks/pii.email'
    );
    expect(info).toEqual({
      operator: 'email',
      classification: 'pii.email',
      rule: 'role:analyst/masks/pii.email',
      detector: ''
    });
    expect(maskTooltip(info)).toBe('Masked: operator email\nclassification pii.email\nrule role:analyst/masks/pii.email');
  });
  it('recognises a content detector', () => {
    const info = parseMaskTitle('masked by the warden gateway: content detector email found values in 3 row(s)');
    expect(info.detector).toBe('email');
    expect(info.operator).toBe('detector:email');
    expect(maskTooltip(info)).toContain('content detector (email)');
  });
});

describe('cellStateFrom', () => {
  it('follows the messages in order', () => {
    expect(cellStateFrom([])).toBe('');
    expect(cellStateFrom([{ kind: 'held', title: 'Held for approval — nothing ran yet' }])).toBe('held');
    expect(
      cellStateFrom([
        { kind: 'held', title: 'Held for approval — nothing ran yet' },
        { kind: 'ok', title: 'Approved by bob — running the cell' }
      ])
    ).toBe('approved');
    expect(cellStateFrom([{ kind: 'denied', title: 'The policy does not allow this — nothing ran' }])).toBe('denied');
    expect(cellStateFrom([{ kind: 'held', title: 'Still held for approval — nothing ran' }])).toBe('held');
    expect(
      cellStateFrom([
        { kind: 'held', title: 'Held for approval — nothing ran yet' },
        { kind: 'denied', title: 'Approval refused — nothing ran' }
      ])
    ).toBe('denied');
    // drawn in the same colours, but not the policy's doing
    expect(cellStateFrom([{ kind: 'denied', title: 'The warden gateway is unavailable — nothing ran' }])).toBe('');
    expect(cellStateFrom([{ kind: 'held', title: 'The query failed' }])).toBe('');
    expect(cellStateFrom([{ kind: 'ok', title: 'something else' }])).toBe('');
  });
});

describe('describeEvent', () => {
  it('summarises a masked query with rows and duration', () => {
    const d = describeEvent({
      event_id: 'e1',
      event_time: '',
      type: 'query.executed',
      connection: 'pg',
      action: 'mask',
      masks: [{ column: 'email', operator: 'email' }],
      rows: 2,
      duration_ms: 12.4,
      approval_id: 'apr_1',
      approver: 'bob'
    });
    expect(d.decision).toBe('executed');
    expect(d.detail).toBe('pg · masked: email · 2 rows · 12 ms · approval apr_1 by bob');
  });
  it('names the rules of a hold and the run of a cell', () => {
    const held = describeEvent({ event_id: 'e', event_time: '', type: 'query.held', action: 'hold', rule_ids: ['r1'], rows: 0 });
    expect(held.detail).toBe('rules: r1');
    expect(held.decision).toBe('held');
    const approved = describeEvent({ event_id: 'a', event_time: '', type: 'query.masked', action: 'hold', approval_id: 'apr_1', approver: 'bob' });
    expect(approved.decision).toBe('approved');
    expect(describeEvent({ event_id: 'm', event_time: '', type: 'query.masked', action: 'mask' }).decision).toBe('masked');
    const cell = describeEvent({ event_id: 'c', event_time: '', type: 'cell.execute', execution_count: 3, status: 'ok', duration_ms: 1500 });
    expect(cell.title).toBe('cell [3]');
    expect(cell.detail).toBe('ok · 1.5 s');
  });
});
