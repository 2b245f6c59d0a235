/**
 * What travels on the Redis bus's channels and cursors, and the small
 * helpers its commands share: parsed and checked here, so a message that is
 * not ours (or is forged) never reaches a chain.
 */
import { randomBytes } from 'node:crypto'
import { compareIds, epochStart, validEpoch, validId, type Entry } from './redis-chain'

/** What `bus.stats()` counts; also in `rt.stats().bus`. */
export interface RedisBusStats {
  /** Both connections are up and answering. */
  connected: boolean
  /** Events delivered to this node's clients only, because Redis did not answer in time. */
  localPublishes: number
  /** Redis commands abandoned after `commandTimeoutMs`. */
  timeouts: number
  /** Holes in a topic's live sequence filled from its stream (a lost pub/sub message, a reconnect). */
  fills: number
  /** Times this node told a topic's subscribers to resync. */
  resyncs: number
  /** Messages on our channels that were not well-formed entries of ours (or ids ahead of Redis's clock): dropped. */
  rejectedMessages: number
  /** Streams found behind what this node had seen (Redis restored from an older snapshot, a lagging replica promoted): a new epoch began, their clients resynced. */
  rollbacks: number
  /** Commands waiting for room among those in flight now: load (backpressure), not a fault. */
  queued: number
  /** Replies that came after the node gave up on them (it had delivered locally): a link slower than commandTimeoutMs/2 one way. */
  lateReplies: number
}

/** `<epoch>_<id>`: the stream's epoch (header id and nonce) and the entry's id. */
export const CURSOR = /^(\d{1,15}-\d{1,20}\.[0-9a-f]{8})_(\d{1,15}-\d{1,20})$/
/**
 * A live message's id may be at most this far ahead of Redis's clock (as the
 * node estimates it). A real id is made by XADD in the same script that
 * publishes it, so it is never ahead; the allowance covers the estimate's
 * error. A foreign id further ahead would hold the topic's live delivery
 * until Redis's clock passed it (every real event after it would look
 * delivered already): it is dropped and counted, and if it hid a real
 * message, the next one's `prev` shows the hole and the stream fills it.
 */
export const FUTURE_MS = 2000
const MAX_TYPE = 200

/** A live message of ours, or `null`: ids well-formed and not from the future, data valid JSON. */
export function parseMessage(message: string, now = Date.now()): Entry | null {
  let m: unknown
  try {
    m = JSON.parse(message)
  } catch {
    return null
  }
  if (typeof m !== 'object' || m === null) return null
  const { i, p, e, t, d, g } = m as Record<string, unknown>
  if (!validId(i) || !validId(p) || !validEpoch(e) || compareIds(p, i) >= 0 || compareIds(epochStart(e), i) > 0) return null
  if (Number(i.slice(0, i.indexOf('-'))) > now + FUTURE_MS) return null
  if (g === 1) return { id: i, prev: p, epoch: e, kind: 'gap' }
  if (typeof t !== 'string' || t === '' || t.length > MAX_TYPE || d === undefined) return null
  // Re-serialised from what was parsed: raw text could not smuggle fields into the frame it is spliced into.
  return { id: i, prev: p, epoch: e, kind: 'event', type: t, data: JSON.stringify(d) }
}

/** A new epoch's nonce: 4 random bytes, hex. */
export function nonce(): string {
  return randomBytes(4).toString('hex')
}

export function isJson(text: string | undefined): boolean {
  if (text === undefined) return false
  try {
    JSON.parse(text)
    return true
  } catch {
    return false
  }
}

/** Wait for `p`, but no longer than `ms`; never rejects. */
export function bounded(p: Promise<unknown>, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms)
    t.unref()
    p.then(() => { clearTimeout(t); resolve() }, () => { clearTimeout(t); resolve() })
  })
}

export function closedError(topic: string): Error {
  return new Error(`cms-realtime: the Redis bus was closed; the event for ${topic} may not have reached any node`)
}

/** Stream entries (XRANGE's `[id, fields]`) as chain entries after `since`; malformed events are dropped and counted. */
export function streamEntries(rows: Array<[string, string[]]>, epoch: string, since: string): { entries: Entry[]; rejected: number } {
  const entries: Entry[] = []
  let rejected = 0
  let prev = since
  for (const [id, fields] of rows) {
    const f: Record<string, string> = {}
    for (let i = 0; i + 1 < fields.length; i += 2) f[fields[i]!] = fields[i + 1]!
    const kind = f.h !== undefined ? 'header' : f.g !== undefined ? 'gap' : 'event'
    if (kind === 'event' && !(typeof f.t === 'string' && isJson(f.d))) {
      rejected++
      continue
    }
    entries.push({ id, prev, epoch, kind, type: f.t, data: f.d })
    prev = id
  }
  return { entries, rejected }
}

/** `fn` now, or once more after the run in progress when asked meanwhile: never two at once, never a request lost. */
export function coalesced(fn: () => Promise<void>, onError: (err: unknown) => void): () => void {
  let running = false
  let again = false
  const run = (): void => {
    if (running) {
      again = true
      return
    }
    running = true
    fn().catch(onError).finally(() => {
      running = false
      if (again) {
        again = false
        run()
      }
    })
  }
  return run
}
