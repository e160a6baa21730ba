import { LabIcon } from '@jupyterlab/ui-components';

// A shield with a check: warden's mark (panels' tabs); no emoji anywhere.
const SHIELD = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16" height="16">
<path class="jp-icon3" fill="#616161" d="M12 2 4 5v6c0 5 3.4 9.7 8 11 4.6-1.3 8-6 8-11V5l-8-3zm-1.2 14.2-3.5-3.5 1.4-1.4 2.1 2.1 4.9-4.9 1.4 1.4-6.3 6.3z"/>
</svg>`;

const TIMELINE = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16" height="16">
<path class="jp-icon3" fill="#616161" d="M6 3h2v4H6zM6 10h2v4H6zM6 17h2v4H6zM10 4h10v2H10zM10 11h10v2H10zM10 18h10v2H10z"/>
</svg>`;

export const wardenIcon = new LabIcon({ name: 'warden:shield', svgstr: SHIELD });
export const timelineIcon = new LabIcon({ name: 'warden:timeline', svgstr: TIMELINE });
