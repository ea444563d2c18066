// Numbers, sizes, times and durations as people read them.
const number = new Intl.NumberFormat(undefined);
const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });

export const formatNumber = (n) => (n == null ? "–" : number.format(n));
export const formatCompact = (n) => (n == null ? "–" : compact.format(n));
export const formatPercent = (x) => (x == null ? "–" : `${(x * 100).toFixed(x > 0 && x < 0.1 ? 1 : 0)} %`);
export const formatMs = (ms) => (ms == null ? "–" : ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`);

export function formatBytes(n) {
  if (n == null) return "–";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export function formatTime(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay
    ? date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

/** Seconds as "45 s", "3 min 20 s", "2 h 5 min". */
export function formatSeconds(seconds) {
  const s = Math.max(0, Math.ceil(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min${s % 60 ? ` ${s % 60} s` : ""}`;
  return `${Math.floor(s / 3600)} h${Math.floor((s % 3600) / 60) ? ` ${Math.floor((s % 3600) / 60)} min` : ""}`;
}

/** An x-ratelimit-reset-* value ("12.345s", "1m30s", "250ms") in seconds. */
export function parseDuration(text) {
  if (!text) return null;
  let total = 0;
  let matched = false;
  for (const [, value, unit] of text.matchAll(/(\d+(?:\.\d+)?)(ms|h|m|s)/g)) {
    matched = true;
    total += Number(value) * { ms: 0.001, s: 1, m: 60, h: 3600 }[unit];
  }
  return matched ? total : Number.isFinite(Number(text)) ? Number(text) : null;
}
