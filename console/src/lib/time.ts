// Dates as the viewer reads them: their own time zone, named.

const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;

/** The viewer's IANA zone (`Europe/Paris`). */
export function viewerZone(): string {
  return zone;
}

/** A date and time to the second, its zone named. */
const WITH_ZONE: Intl.DateTimeFormatOptions = {
  year: "numeric",
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  timeZoneName: "short",
};

const full = new Intl.DateTimeFormat(undefined, WITH_ZONE);

/** `7 Dec 2026, 14:03:12 CET` in the viewer's zone, or `—`. */
export function formatTime(iso: string | null | undefined, tz?: string): string {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  if (tz) {
    return new Intl.DateTimeFormat(undefined, { ...WITH_ZONE, timeZone: tz }).format(d);
  }
  return full.format(d);
}

/** A span of journey time: `+0s`, `+4h`, `+1d 2h`, `+2m 5s`. */
export function formatOffset(ms: number): string {
  if (ms <= 0) return "+0s";
  const s = Math.floor(ms / 1000);
  const parts: [number, string][] = [
    [Math.floor(s / 86400), "d"],
    [Math.floor((s % 86400) / 3600), "h"],
    [Math.floor((s % 3600) / 60), "m"],
    [s % 60, "s"],
  ];
  const shown = parts.filter(([n]) => n > 0).slice(0, 2);
  if (shown.length === 0) return `+${ms}ms`;
  return "+" + shown.map(([n, u]) => `${n}${u}`).join(" ");
}

/** `3 min ago`, `in 2 h`. */
export function relative(iso: string | null | undefined, now: Date = new Date()): string {
  if (!iso) return "—";
  const diff = new Date(iso).getTime() - now.getTime();
  const abs = Math.abs(diff);
  const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: "auto", style: "short" });
  if (abs < 60_000) return rtf.format(Math.round(diff / 1000), "second");
  if (abs < 3_600_000) return rtf.format(Math.round(diff / 60_000), "minute");
  if (abs < 86_400_000) return rtf.format(Math.round(diff / 3_600_000), "hour");
  return rtf.format(Math.round(diff / 86_400_000), "day");
}

/** The start of the viewer's today, as an instant. */
export function startOfToday(now: Date = new Date()): Date {
  const d = new Date(now);
  d.setHours(0, 0, 0, 0);
  return d;
}
