/**
 * Reconnection delays: exponential, capped, with jitter so a server restart
 * is not met by every editor at the same instant. Pure: `random` is given.
 */

export interface BackoffOptions {
  /** Delay before the first retry, before jitter. Default 500. */
  initialMs: number
  /** Largest delay. Default 30000. */
  maxMs: number
  /** Growth per attempt. Default 2. */
  factor: number
  /** Share of the delay that is random: 0 none, 1 "full jitter". Default 0.5. */
  jitter: number
}

export const BACKOFF: BackoffOptions = { initialMs: 500, maxMs: 30_000, factor: 2, jitter: 0.5 }

/** Delay before retry number `attempt` (0-based); `random()` in [0, 1). Always within [(1 - jitter) · d, d], d = min(maxMs, initialMs · factor^attempt). */
export function backoff(attempt: number, o: BackoffOptions = BACKOFF, random: () => number = Math.random): number {
  const d = Math.min(o.maxMs, o.initialMs * Math.pow(o.factor, Math.max(0, attempt)))
  return Math.round(d * (1 - o.jitter * random()))
}
