// The warden labextension: status bar item, approvals panel, held/denied/masked markers
// in notebooks, and the audit timeline of the current notebook's kernel session.

import { ILabShell, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { IStatusBar, showPopup } from '@jupyterlab/statusbar';
import { Widget } from '@lumino/widgets';

import { ApiFailure, requestAPI } from './api';
import { timelineIcon, wardenIcon } from './icons';
import { Approval, Approvals, AuditEvent, Status, Timeline, splitApprovals } from './model';
import { decorateNotebook, renderApprovals, renderStatusItem, renderStatusPopover, renderTimeline } from './render';

const STATUS_POLL_MS = 10000;
const PANEL_POLL_MS = 1500; // live enough for a waiting analyst, cheap for the server

function message(err: unknown): string {
  return err instanceof ApiFailure || err instanceof Error ? err.message : String(err);
}

/** Runs ``tick`` now and every ``ms`` while ``active()``; one call at a time. */
function poll(ms: number, tick: () => Promise<void>, active: () => boolean = () => true): () => void {
  let busy = false;
  const run = () => {
    if (busy || !active()) {
      return;
    }
    busy = true;
    void tick().finally(() => (busy = false));
  };
  run();
  window.setInterval(run, ms);
  return run;
}

class StatusItem extends Widget {
  status: Status | null = null;
  constructor() {
    super();
    this.id = 'warden-status';
    this.addClass('jp-StatusBar-GroupItem');
    renderStatusItem(this.node, null);
    this.node.addEventListener('click', () => this.openPopover());
    poll(STATUS_POLL_MS, () => this.refresh());
  }
  async refresh(): Promise<void> {
    try {
      this.status = await requestAPI<Status>('status');
    } catch (err) {
      this.status = {
        extension_version: '',
        gateway_url: '',
        health: null,
        whoami: null,
        error: { code: 'server', message: message(err) }
      };
    }
    renderStatusItem(this.node, this.status);
  }
  openPopover(): void {
    const body = new Widget();
    body.addClass('warden-popover-body');
    renderStatusPopover(body.node, this.status);
    showPopup({ body, anchor: this, align: 'left' });
  }
}

class ApprovalsPanel extends Widget {
  data: Approvals | null = null;
  error = '';
  refreshNow: () => void;
  constructor() {
    super();
    this.id = 'warden-approvals';
    this.title.icon = wardenIcon;
    this.title.caption = 'warden approvals';
    this.addClass('warden-panel');
    // Open: every 1.5 s. Closed: every 10th tick, so an approver's tab can show that
    // something waits (a dot on the shield).
    let tick = 0;
    this.refreshNow = poll(PANEL_POLL_MS, () => this.refresh(), () => this.isVisible || tick++ % 10 === 0);
  }
  async refresh(): Promise<void> {
    // Keep an open reason form: redraw only when something changed and no form is open.
    if (this.node.querySelector('form.warden-reason-form:not([hidden])')) {
      return;
    }
    let error = '';
    let data = this.data;
    try {
      data = await requestAPI<Approvals>('approvals');
    } catch (err) {
      error = message(err);
    }
    if (JSON.stringify(data) === JSON.stringify(this.data) && error === this.error) {
      return;
    }
    this.data = data;
    this.error = error;
    const waiting = data ? splitApprovals(data).queue.length : 0;
    this.title.className = waiting ? 'warden-tab-pending' : '';
    this.title.caption = waiting ? `warden approvals: ${waiting} waiting for you` : 'warden approvals';
    this.render();
  }
  render(): void {
    renderApprovals(this.node, this.data, this.error, (a, approve, reason) => this.decide(a, approve, reason));
  }
  async decide(a: Approval, approve: boolean, reason: string): Promise<string | null> {
    try {
      await requestAPI(`approvals/${encodeURIComponent(a.id)}/${approve ? 'approve' : 'deny'}`, {
        method: 'POST',
        body: JSON.stringify({ reason })
      });
    } catch (err) {
      return message(err);
    }
    this.data = null; // redraw on the next answer
    window.setTimeout(() => this.refreshNow(), 0);
    return null;
  }
  protected onAfterShow(): void {
    this.refreshNow();
  }
}

class TimelinePanel extends Widget {
  events: AuditEvent[] | null = null;
  error = '';
  heading = '';
  refreshNow: () => void;
  constructor(private tracker: INotebookTracker) {
    super();
    this.id = 'warden-timeline';
    this.title.icon = timelineIcon;
    this.title.caption = 'warden audit timeline (this notebook\u2019s kernel session)';
    this.addClass('warden-panel');
    this.refreshNow = poll(PANEL_POLL_MS, () => this.refresh(), () => this.isVisible);
    tracker.currentChanged.connect(() => this.refreshNow());
  }
  async refresh(): Promise<void> {
    const panel = this.tracker.currentWidget;
    const kernelId = panel?.sessionContext.session?.kernel?.id || '';
    let events: AuditEvent[] | null = null;
    let error = '';
    const heading = panel ? panel.context.path : 'No notebook open';
    if (kernelId) {
      try {
        const t = await requestAPI<Timeline>(`timeline?kernel_id=${encodeURIComponent(kernelId)}`);
        events = t.events;
      } catch (err) {
        error = message(err);
      }
    }
    if (JSON.stringify(events) === JSON.stringify(this.events) && error === this.error && heading === this.heading) {
      return;
    }
    this.events = events;
    this.error = error;
    this.heading = heading;
    renderTimeline(this.node, events, heading, error, e => this.scrollTo(e));
  }
  scrollTo(e: AuditEvent): void {
    const panel = this.tracker.currentWidget;
    if (!panel || !e.cell_id) {
      return;
    }
    const nb = panel.content;
    const index = nb.widgets.findIndex(c => c.model.id === e.cell_id);
    if (index < 0) {
      return;
    }
    nb.activeCellIndex = index;
    const cell = nb.widgets[index];
    void nb.scrollToCell(cell, 'center').then(() => {
      cell.node.classList.add('warden-flash');
      window.setTimeout(() => cell.node.classList.remove('warden-flash'), 1500);
    });
  }
  protected onAfterShow(): void {
    this.refreshNow();
  }
}

/** Markers: watch each notebook's DOM and decorate held/denied cells and masked columns. */
function watchNotebook(panel: NotebookPanel): void {
  let pending = 0;
  const run = () => {
    pending = 0;
    decorateNotebook(panel.content.node);
  };
  const observer = new MutationObserver(() => {
    if (!pending) {
      pending = window.setTimeout(run, 50);
    }
  });
  observer.observe(panel.content.node, { childList: true, subtree: true });
  panel.disposed.connect(() => observer.disconnect());
  run();
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyterlab-warden:plugin',
  description: 'warden: identity and gateway status, approvals, markers and the audit timeline',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [IStatusBar, ILabShell],
  activate: (app: JupyterFrontEnd, tracker: INotebookTracker, statusBar: IStatusBar | null) => {
    if (statusBar) {
      statusBar.registerStatusItem('jupyterlab-warden:status', { item: new StatusItem(), align: 'left', rank: -1 });
    }
    app.shell.add(new ApprovalsPanel(), 'left', { rank: 650 });
    app.shell.add(new TimelinePanel(tracker), 'right', { rank: 650 });
    tracker.widgetAdded.connect((_, panel) => watchNotebook(panel));
    tracker.forEach(panel => watchNotebook(panel));
  }
};

export default plugin;
