/**
 * One topic's live sequence on one node: exactly once, in order, or resync.
 *
 * Every stream entry a node learns of (a pub/sub message, its own publish's
 * reply, a history read) names its id, the id before it and the stream's
 * epoch. The chain delivers an entry only when it follows the last one
 * delivered; an older or repeated one is dropped; a hole (a message lost
 * while a connection was down, a late subscriber) is filled from the stream
 * before anything after it; what the stream can no longer vouch for (trimmed,
 * lost with its epoch) becomes a `resync`. So pub/sub is only a fast path:
 * correctness rests on the stream's ids.
 */

/** A stream entry as the chain sees it. `kind` `gap`: events were delivered without Redis here (resync). */
export interface Entry {
  id: string
  prev: string
  epoch: string
  kind: 'event' | 'gap' | 'header' | 'catch-up'
  type?: string
  /** JSON text. */
  data?: string
}

export interface ChainHost {
  /** A listener threw while the chain was delivering (logged and counted by the host; the chain goes on). */
  error(err: unknown): void
  /** Entries after `since` up to `upto` (inclusive) of `epoch`, oldest first; `null` when the stream cannot vouch for them. Must not reject. */
  fill(epoch: string, since: string, upto: string): Promise<Entry[] | null>
  deliver(entry: Entry): void
  resync(): void
}

const ID = /^(\d{1,15})-(\d{1,20})$/

export function validId(id: unknown): id is string {
  return typeof id === 'string' && ID.test(id)
}

/** An epoch: the id of the stream's header entry and its random nonce. */
const EPOCH = /^(\d{1,15}-\d{1,20})\.[0-9a-f]{8}$/

export function validEpoch(epoch: unknown): epoch is string {
  return typeof epoch === 'string' && EPOCH.test(epoch)
}

/** The header id an epoch began at. */
export function epochStart(epoch: string): string {
  return epoch.slice(0, epoch.indexOf('.'))
}

/**
 * Order of two epochs by when their stream was created; two different epochs
 * created in the same millisecond count the second as newer (a needless
 * resync at worst, never a replay across them).
 */
export function compareEpochs(a: string, b: string): number {
  if (a === b) return 0
  return compareIds(epochStart(a), epochStart(b)) || 1
}

/** Compare stream ids `ms-seq` numerically. */
export function compareIds(a: string, b: string): number {
  const da = a.indexOf('-')
  const db = b.indexOf('-')
  const am = Number(a.slice(0, da))
  const bm = Number(b.slice(0, db))
  if (am !== bm) return am < bm ? -1 : 1
  const as = BigInt(a.slice(da + 1))
  const bs = BigInt(b.slice(db + 1))
  return as === bs ? 0 : as < bs ? -1 : 1
}

export class Chain {
  epoch: string | null = null
  lastId: string | null = null
  /** Entries waiting: until the chain knows where it starts, or while a hole is being filled. */
  private readonly queue: Entry[] = []
  private filling = false
  /** Waiters for `lastId` to reach an id (history reads of clients ahead of this node). */
  private waiters: Array<{ epoch: string; id: string; resolve: (ok: boolean) => void }> = []

  constructor(private readonly host: ChainHost) {}

  /** Where the chain starts (the stream's epoch and last id when this node began to listen). */
  start(epoch: string, lastId: string): void {
    this.epoch = epoch
    this.lastId = lastId
    this.drain()
  }

  /**
   * Jump to (`epoch`, `lastId`) after telling subscribers to resync: what
   * came before is refetched, not replayed. Queued entries up to it are
   * dropped. Never backwards: the caller read `lastId` from Redis, and the
   * chain may have delivered later entries before the reply came (they would
   * be delivered twice).
   */
  jump(epoch: string, lastId: string): void {
    this.host.resync()
    const behind = this.epoch !== null && (this.epoch === epoch ? compareIds(lastId, this.lastId!) < 0 : compareEpochs(epoch, this.epoch) < 0)
    if (behind) this.drain()
    else this.start(epoch, lastId)
  }

  get started(): boolean {
    return this.epoch !== null
  }

  push(entry: Entry): void {
    this.queue.push(entry)
    this.drain()
  }

  /** Read what came after the last entry from the stream, as after a reconnect (queued behind what is already waiting). */
  catchUp(): void {
    if (this.epoch === null) return
    this.queue.push({ id: '+', prev: '', epoch: this.epoch, kind: 'catch-up' })
    this.drain()
  }

  /** Resolves `true` once `lastId` reaches `id` of `epoch`, `false` after `ms` or on another epoch. */
  reached(epoch: string, id: string, ms: number): Promise<boolean> {
    if (this.epoch !== null && this.epoch !== epoch) return Promise.resolve(false)
    if (this.epoch === epoch && this.lastId !== null && compareIds(this.lastId, id) >= 0) return Promise.resolve(true)
    return new Promise((resolve) => {
      const w = { epoch, id, resolve }
      this.waiters.push(w)
      setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w)
        resolve(false)
      }, ms).unref()
    })
  }

  private drain(): void {
    while (!this.filling && this.epoch !== null && this.queue.length > 0) {
      const e = this.queue[0]!
      if (e.epoch !== this.epoch) {
        if (compareEpochs(e.epoch, this.epoch) < 0) {
          this.queue.shift() // a straggler of an older epoch
          continue
        }
        // A newer epoch: the stream was lost and re-created, nothing can
        // bridge the two. Resync, and go on from just before this entry.
        this.host.resync()
        this.epoch = e.epoch
        this.lastId = e.prev
        continue
      }
      const catchUp = e.kind === 'catch-up'
      if (!catchUp) {
        if (compareIds(e.id, this.lastId!) <= 0) {
          this.queue.shift() // delivered already: a pub/sub echo of our own publish, a replayed entry
          continue
        }
        if (e.prev === this.lastId) {
          this.queue.shift()
          this.apply(e)
          continue
        }
      }
      this.fillHole(e)
      return
    }
  }

  /** A hole before `e` (or, for a catch-up, after the last entry): read it from the stream, then go on. */
  private fillHole(e: Entry): void {
    const epoch = this.epoch!
    this.filling = true
    this.host.fill(epoch, this.lastId!, e.id).then((entries) => {
      this.filling = false
      if (e.kind === 'catch-up') this.queue.shift()
      if (this.epoch === epoch) {
        if (entries === null) {
          // The stream cannot vouch for the hole: resync, then go on from this entry.
          this.host.resync()
          if (e.kind !== 'catch-up') this.lastId = e.prev
        } else {
          for (const x of entries) if (compareIds(x.id, this.lastId!) > 0) this.apply(x)
          // The stream does not hold the message's id: not one of ours (forged, foreign). Dropped.
          if (e.kind !== 'catch-up' && compareIds(e.id, this.lastId!) > 0) this.queue.shift()
        }
      }
      this.drain()
    }).catch((err: unknown) => {
      // Only a throwing listener gets here (fill never rejects): keep the chain moving.
      this.filling = false
      this.host.error(err)
    })
  }

  private apply(e: Entry): void {
    this.lastId = e.id
    if (e.kind === 'event') this.host.deliver(e)
    else if (e.kind === 'gap') this.host.resync()
    if (this.waiters.length > 0) {
      const done = this.waiters.filter((w) => w.epoch === this.epoch && compareIds(this.lastId!, w.id) >= 0)
      if (done.length > 0) {
        this.waiters = this.waiters.filter((w) => !done.includes(w))
        for (const w of done) w.resolve(true)
      }
    }
  }
}

/** One topic this node's clients hold, as the Redis bus tracks it. */
export interface TopicState {
  chain: Chain
  /** Redis confirmed the SUBSCRIBE; until then recovery retries it. */
  subscribed: boolean
  /** Settles once the subscription is confirmed and the chain knows where it starts (or that it cannot know yet). */
  ready: Promise<void>
  /** This node delivered events of the topic without Redis: stream entries wait until recovery (resync, then on). */
  local: boolean
  /** Its subscribers may have missed events (subscribed during an outage): resync once the chain starts. */
  stale: boolean
}

/**
 * Per topic, the newest stream id a node has seen (published or delivered)
 * and its epoch; the oldest topic is forgotten past `max`. A stream found
 * behind it was rolled back (see redis-scripts.ts, ROLLED_BACK).
 */
export class HighWater {
  private readonly marks = new Map<string, { epoch: string; id: string }>()

  constructor(private readonly max = 10_000) {}

  get(topic: string): { epoch: string; id: string } | undefined {
    return this.marks.get(topic)
  }

  mark(topic: string, epoch: string, id: string): void {
    const hw = this.marks.get(topic)
    if (hw !== undefined && hw.epoch === epoch && compareIds(hw.id, id) >= 0) return
    this.marks.delete(topic)
    this.marks.set(topic, { epoch, id })
    if (this.marks.size > this.max) this.marks.delete(this.marks.keys().next().value!)
  }

  all(): Array<[string, { epoch: string; id: string }]> {
    return [...this.marks]
  }
}
