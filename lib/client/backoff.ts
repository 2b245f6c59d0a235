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

/**
 * A connection's attempts: the backoff, and the wait a server asked for
 * (`Retry-After`, as past `maxConnections`), which no attempt may come
 * before, whatever the backoff says. The server jitters it, so refused
 * clients do not come back together.
 */
export class Attempts {
  private attempt = 0
  /** No attempt before this time (epoch ms). */
  private notBefore = 0

  constructor(private readonly o: BackoffOptions) {}

  /** How long to wait before the next attempt. */
  next(): number {
    return Math.max(backoff(this.attempt++, this.o), this.notBefore - Date.now())
  }

  /** A connection opened: the backoff starts over (the server's wait does not). */
  reset(): void {
    this.attempt = 0
  }

  /** The server asked for `ms` (at most 5 minutes are believed); false when it asked for nothing. */
  holdOff(ms: number): boolean {
    if (!(ms > 0)) return false
    this.notBefore = Math.max(this.notBefore, Date.now() + Math.min(ms, 5 * 60_000))
    return true
  }

  /** Is a wait the server asked for still running? */
  get holding(): boolean {
    return Date.now() < this.notBefore
  }
}
