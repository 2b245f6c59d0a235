/**
 * Where presence and soft locks live: leases, never state tied to a socket.
 * Every entry expires unless the node that serves its tab renews it, so a
 * crashed node's entries vanish within one lease, and no node ever wipes
 * another's at boot. The memory store serves one process; the Redis store
 * (from `RedisBus`) shares them between nodes.
 */
import type { LockHolder, PresenceMember } from '../client/wire'

export type { LockHolder, PresenceMember } from '../client/wire'

export type Acquired = { ok: true; previous: LockHolder | null } | { ok: false; holder: LockHolder }

export interface CollabStore {
  /** Join or update `member` on `topic`, for `leaseMs` unless renewed, as served by `node`. */
  present(topic: string, member: PresenceMember, leaseMs: number, node: string): Promise<void>
  /**
   * Remove the tab from `topic` (a leave, or the grace after a drop ended),
   * only if `node` still serves it: the tab may have reconnected to another
   * node meanwhile, and that node's entry must stay.
   */
  absent(topic: string, tab: string, node: string): Promise<void>
  /** Who is on `topic` now (expired entries left out). */
  members(topic: string): Promise<PresenceMember[]>
  /**
   * Take the lock on `key` for `holder.tab`: granted when free, already this
   * tab's, or `takeover`; otherwise refused with the holder. `since` is set
   * by the store when the lock changes hands.
   */
  acquire(key: string, holder: Omit<LockHolder, 'since'>, leaseMs: number, takeover: boolean, node: string): Promise<Acquired>
  /** Release `key` if `tab` holds it, through `node` (any node when `node` is undefined: an admin's release). */
  release(key: string, tab: string, node: string | undefined): Promise<boolean>
  holder(key: string): Promise<LockHolder | null>
  /**
   * Extend the leases this node still serves: presence `[topic, tab]` pairs
   * and locks `[key, tab]` pairs. Resolves to the presence pairs that were
   * no longer there (lapsed, or Redis lost them): the node presents them again.
   */
  renew(
    presence: ReadonlyArray<readonly [string, string]>, locks: ReadonlyArray<readonly [string, string]>, leaseMs: number,
  ): Promise<Array<readonly [string, string]>>
  /** Another node changed `name` (a presence topic or a lock key): re-read it. */
  onChange(listener: (kind: 'presence' | 'lock', name: string) => void): void
  /** Entries can lapse without anyone being told (a crashed node's): the core re-reads what it watches this often. */
  readonly sweeps: boolean
  close(): Promise<void>
}

/** One process: maps, with the same lease rules as Redis (time from `Date.now`). */
export class MemoryCollabStore implements CollabStore {
  readonly sweeps = false
  private readonly topics = new Map<string, Map<string, { member: PresenceMember; until: number; node: string }>>()
  private readonly locks = new Map<string, { holder: LockHolder; until: number; node: string }>()

  async present(topic: string, member: PresenceMember, leaseMs: number, node: string): Promise<void> {
    let m = this.topics.get(topic)
    if (m === undefined) this.topics.set(topic, (m = new Map()))
    m.set(member.tab, { member, until: Date.now() + leaseMs, node })
  }

  async absent(topic: string, tab: string, node: string): Promise<void> {
    const m = this.topics.get(topic)
    if (m?.get(tab)?.node !== node) return
    m.delete(tab)
    if (m.size === 0) this.topics.delete(topic)
  }

  async members(topic: string): Promise<PresenceMember[]> {
    const m = this.topics.get(topic)
    if (m === undefined) return []
    const now = Date.now()
    const out: PresenceMember[] = []
    for (const [tab, e] of m) {
      if (e.until > now) out.push(e.member)
      else m.delete(tab)
    }
    if (m.size === 0) this.topics.delete(topic)
    return out
  }

  async acquire(key: string, holder: Omit<LockHolder, 'since'>, leaseMs: number, takeover: boolean, node: string): Promise<Acquired> {
    const now = Date.now()
    const cur = this.locks.get(key)
    const live = cur !== undefined && cur.until > now ? cur.holder : null
    if (live !== null && live.tab !== holder.tab && !takeover) return { ok: false, holder: live }
    const since = live !== null && live.tab === holder.tab ? live.since : now
    this.locks.set(key, { holder: { ...holder, since }, until: now + leaseMs, node })
    return { ok: true, previous: live !== null && live.tab !== holder.tab ? live : null }
  }

  async release(key: string, tab: string, node: string | undefined): Promise<boolean> {
    const cur = this.locks.get(key)
    if (cur === undefined || cur.holder.tab !== tab || (node !== undefined && cur.node !== node)) return false
    this.locks.delete(key)
    return cur.until > Date.now()
  }

  async holder(key: string): Promise<LockHolder | null> {
    const cur = this.locks.get(key)
    if (cur === undefined) return null
    if (cur.until > Date.now()) return cur.holder
    this.locks.delete(key)
    return null
  }

  async renew(
    presence: ReadonlyArray<readonly [string, string]>, locks: ReadonlyArray<readonly [string, string]>, leaseMs: number,
  ): Promise<Array<readonly [string, string]>> {
    const until = Date.now() + leaseMs
    const missing: Array<readonly [string, string]> = []
    for (const pair of presence) {
      const e = this.topics.get(pair[0])?.get(pair[1])
      if (e !== undefined) e.until = until
      else missing.push(pair)
    }
    for (const [key, tab] of locks) {
      const cur = this.locks.get(key)
      if (cur !== undefined && cur.holder.tab === tab) cur.until = until
    }
    return missing
  }

  onChange(): void {
    // One process: every change is made here, and the core re-reads after its own changes.
  }

  async close(): Promise<void> {
    this.topics.clear()
    this.locks.clear()
  }
}
