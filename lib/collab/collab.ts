/**
 * Presence and soft locks on one node, over a shared `CollabStore`.
 *
 * - The unit is the tab (its id comes from the client), never the socket
 *   or the user: a second tab is not "someone else", and closing one tab
 *   does not remove a user still present in another.
 * - A tab whose socket drops stays present for `leaveGraceMs` and keeps its
 *   locks for `lockGraceMs`, so a reload or a network blip does not flicker
 *   or lose the lock: the same tab reconnecting in time takes them back. An
 *   explicit `leave`/`unlock` (the client sends them on `pagehide`) is immediate.
 * - Every entry in the store is a lease of `leaseMs`, renewed by this node
 *   every `leaseMs / 3` while it serves the tab (grace included). A node
 *   that crashes stops renewing; its entries lapse within one lease, and
 *   nodes that watch the topic notice at their next sweep.
 * - Everyone present on a topic receives its member list and lock holder
 *   on every change (`presence` frames, coalesced); a lock holder that is
 *   taken over is told at once, on whichever node it is (`lock-lost`).
 */
import { randomBytes } from 'node:crypto'
import type { LockHolder, PresenceMember } from '../client/wire'
import type { User } from '../types'
import { userId } from '../users'
import { Announcer } from './announcer'
import { InFlight, publicTab, type Check, type Held, type Participant } from './participant'
import { hook, profileOf, type CollabSettings } from './settings'
import type { CollabStore } from './store'

export { publicTab, type Participant } from './participant'
export type { CollabSettings } from './settings'


export class Collab {
  /** Tabs present here, by topic: the ones that receive its `presence` frames. */
  private readonly here = new Map<string, Map<string, Participant>>()
  /** What each participant holds: presence tab per topic, and lock keys. */
  private readonly parts = new Map<Participant, { topics: Map<string, string>; locks: Set<string> }>()
  /** What each tab served here said of itself, by `topic \0 tab` (to present it again if the store lost it). */
  private readonly said = new Map<string, PresenceMember>()
  /** Presence kept through the grace after a drop, by `topic \0 tab`. */
  private readonly leaving = new Map<string, NodeJS.Timeout>()
  /** Locks this node serves. */
  private readonly held = new Map<string, Held>()
  /** Presence and lock requests whose checks are being awaited. */
  private readonly checks = new InFlight()
  /** `presence` frames, coalesced and sent only on change. */
  private readonly frames = new Announcer((name) => this.guard('refresh', () => this.refresh(name)))
  /** This node, as the store records who serves an entry. */
  private readonly node = randomBytes(6).toString('hex')
  private readonly timers: NodeJS.Timeout[] = []
  private closed = false

  constructor(
    private readonly store: CollabStore,
    private readonly settings: CollabSettings,
    private readonly allowed: (user: User, topic: string) => Promise<boolean>,
    private readonly onError: (where: string, err: unknown) => void,
    private readonly maxPerConnection = 100,
  ) {
    store.onChange((_kind, name) => this.touch(name))
    const every = Math.max(50, Math.floor(settings.leaseMs / 3))
    this.timers.push(setInterval(() => this.guard('renew', () => this.renew()), every))
    // A crashed node's entries lapse silently: re-read what is watched here.
    if (store.sweeps) this.timers.push(setInterval(() => this.guard('sweep', () => this.sweep()), every))
    for (const t of this.timers) t.unref()
  }

  // ---- what clients ask ----

  async presence(p: Participant, topic: string, ownTab: string, meta: unknown): Promise<void> {
    if (!this.room(p, topic, 'topics')) return
    const check = this.checks.begin(p, topic, 'presence')
    try {
      if (!(await this.permitted(p, topic, check)) || !p.open) return
    } finally {
      check.done()
    }
    const user = userId(p.user) ?? ''
    const tab = publicTab(user, ownTab)
    // One tab per topic per connection: a connection that presents another
    // tab id replaces its entry (else each id would stay as a ghost member).
    const previous = this.parts.get(p)?.topics.get(topic)
    if (previous !== undefined && previous !== tab) {
      await this.leave(p, topic)
      if (!p.open) return
    }
    const info = profileOf(this.settings, p.user, this.onError)
    const member: PresenceMember = info === undefined ? { user, tab, meta } : { user, tab, meta, info }
    this.cancelLeave(topic, tab)
    this.said.set(`${topic}\u0000${tab}`, member)
    let tabs = this.here.get(topic)
    if (tabs === undefined) this.here.set(topic, (tabs = new Map()))
    tabs.set(tab, p)
    this.part(p).topics.set(topic, tab)
    this.frames.welcome(topic, p)
    if (!(await this.tryStore(p, topic, () => this.store.present(topic, member, this.settings.leaseMs, this.node)))) return
    p.send({ op: 'present', topic, user, tab })
    this.touch(topic)
  }

  async leave(p: Participant, topic: string): Promise<void> {
    const tab = this.parts.get(p)?.topics.get(topic)
    if (tab === undefined) return
    this.dropLocal(p, topic, tab)
    await this.tryStore(null, topic, () => this.store.absent(topic, tab, this.node))
    this.touch(topic)
  }

  async lock(p: Participant, key: string, ownTab: string, takeover: boolean): Promise<void> {
    if (!this.room(p, key, 'locks')) return
    // Until the lock is recorded as held, `reauthorize` finds the key here.
    const check = this.checks.begin(p, key, 'lock')
    try {
      await this.lockChecked(p, key, ownTab, takeover, check)
    } finally {
      check.done()
    }
  }

  private async lockChecked(p: Participant, key: string, ownTab: string, takeover: boolean, check: Check): Promise<void> {
    if (!(await this.permitted(p, key, check))) return
    const tab = publicTab(userId(p.user) ?? '', ownTab)
    const s = this.settings
    if (s.canLock !== undefined && (await hook(this.onError, 'canLock', () => s.canLock!(p.user, key))) !== true) {
      return p.send({ op: 'error', code: 'forbidden', message: 'not allowed to lock this key', topic: key })
    }
    if (takeover && s.canTakeOver !== undefined) {
      const current = await this.store.holder(key).catch(() => null)
      if (current !== null && current.tab !== tab && (await hook(this.onError, 'canTakeOver', () => s.canTakeOver!(p.user, key, current))) !== true) {
        return p.send({ op: 'error', code: 'forbidden', message: 'not allowed to take this lock over', topic: key })
      }
    }
    const info = profileOf(this.settings, p.user, this.onError)
    const who = { user: userId(p.user) ?? '', tab, ...(info === undefined ? {} : { info }) }
    // The socket may have closed while the checks were awaited: take nothing for it.
    if (!p.open) return
    let got
    try {
      got = await this.store.acquire(key, who, s.leaseMs, takeover, this.node)
    } catch (err) {
      this.onError('lock', err)
      return p.send({ op: 'error', code: 'unavailable', message: 'locks are unavailable right now', topic: key })
    }
    if (!got.ok) return p.send({ op: 'lock', key, result: 'refused', holder: got.holder })
    if (!p.open || check.withdrawn !== false) {
      // Closed, access withdrawn, or given up while the store granted it: released at once.
      await this.tryStore(null, key, () => this.store.release(key, tab, this.node))
      if (check.withdrawn === 'revoked' && p.open) p.send({ op: 'error', code: 'forbidden', message: 'not allowed on this topic', topic: key })
      return this.touch(key)
    }
    const before = this.held.get(key)
    if (before?.timer !== undefined) clearTimeout(before.timer)
    if (before?.by != null && before.by !== p && before.tab !== tab) this.lost(key, before, { ...who, since: Date.now() })
    this.held.set(key, { tab, by: p })
    this.part(p).locks.add(key)
    p.send({ op: 'lock', key, result: 'held' })
    this.touch(key)
  }

  async unlock(p: Participant, key: string): Promise<void> {
    // A lock this connection is still asking for (a reclaim after a
    // reconnect, say) is given up: it releases what it gets, quietly.
    if (this.checks.withdraw(p, key, 'released', 'lock')) {
      const h = this.held.get(key)
      if (h !== undefined && h.by === p) await this.release(p, key, h)
      return p.send({ op: 'unlocked', key })
    }
    const h = this.held.get(key)
    if (h === undefined || h.by !== p) {
      // Not this connection's: a client must never believe it freed a lock
      // that someone else still holds. A free lock is simply "unlocked".
      const current = await this.store.holder(key).catch(() => null)
      if (current === null) return p.send({ op: 'unlocked', key })
      return p.send({ op: 'error', code: 'not_holder', message: 'another tab holds this lock; nothing was released', topic: key })
    }
    await this.release(p, key, h)
    p.send({ op: 'unlocked', key })
  }

  /** The socket closed: presence and locks stay through their grace, for the same tab to take back. */
  gone(p: Participant): void {
    const part = this.parts.get(p)
    if (part === undefined) return
    this.parts.delete(p)
    for (const [topic, tab] of part.topics) {
      this.dropLocal(p, topic, tab, false)
      const id = `${topic}\u0000${tab}`
      clearTimeout(this.leaving.get(id))
      const timer = setTimeout(() => {
        this.leaving.delete(id)
        this.said.delete(id)
        this.guard('leave after grace', async () => {
          await this.store.absent(topic, tab, this.node)
          this.touch(topic)
        })
      }, this.settings.leaveGraceMs)
      timer.unref()
      this.leaving.set(id, timer)
    }
    for (const key of part.locks) {
      const h = this.held.get(key)
      if (h === undefined || h.by !== p) continue
      h.by = null
      h.timer = setTimeout(() => {
        if (this.held.get(key) !== h) return
        this.held.delete(key)
        this.guard('unlock after grace', async () => {
          await this.store.release(key, h.tab, this.node)
          this.touch(key)
        })
      }, this.settings.lockGraceMs)
      h.timer.unref()
    }
  }

  /**
   * Access to `topic` was withdrawn (`rt.reauthorize`): out of its presence,
   * and its lock released, at once. The tab is told `lock-lost` (by nobody),
   * as for a takeover, so its page stops editing; the `unsubscribed` frame
   * the connection sends tells it the presence is over.
   */
  revoked(p: Participant, topic: string): void {
    // A presence or lock whose checks are still awaited must not land on a stale verdict.
    this.checks.withdraw(p, topic, 'revoked')
    this.guard('revoke', async () => {
      await this.leave(p, topic)
      const h = this.held.get(topic)
      if (h?.by !== p) return
      await this.release(p, topic, h)
      p.send({ op: 'lock-lost', key: topic, by: null })
    })
  }

  /** Topics `p` is present on, holds a lock on, or is being checked for (so `reauthorize` checks them too). */
  topicsOf(p: Participant): string[] {
    const part = this.parts.get(p)
    const checks = this.checks.names(p)
    if (part === undefined && checks.length === 0) return []
    return [...new Set([...(part?.topics.keys() ?? []), ...(part?.locks ?? []), ...checks])]
  }

  // ---- what the server reads ----

  members(topic: string): Promise<PresenceMember[]> {
    return this.store.members(topic)
  }

  holder(key: string): Promise<LockHolder | null> {
    return this.store.holder(key)
  }

  /** Release `key` whoever holds it (an admin's action); its holder is told. */
  async forceRelease(key: string): Promise<boolean> {
    const h = await this.store.holder(key)
    if (h === null) return false
    const released = await this.store.release(key, h.tab, undefined)
    this.touch(key)
    return released
  }

  async close(): Promise<void> {
    this.closed = true
    for (const t of this.timers) clearInterval(t)
    this.frames.close()
    for (const t of this.leaving.values()) clearTimeout(t)
    for (const h of this.held.values()) clearTimeout(h.timer)
    // Leases are left to lapse: tabs reconnecting to another node within
    // the grace take their presence and locks back there.
    await this.store.close()
  }

  // ---- internals ----

  /** `p` gives up `key`, which it holds through `h`: here and in the store. */
  private async release(p: Participant, key: string, h: Held): Promise<void> {
    this.held.delete(key)
    clearTimeout(h.timer)
    this.parts.get(p)?.locks.delete(key)
    await this.tryStore(null, key, () => this.store.release(key, h.tab, this.node))
    this.touch(key)
  }

  /** Re-read `name` soon (coalesced): its members and lock, pushed to those present here. */
  private touch(name: string): void {
    if (!this.closed) this.frames.touch(name)
  }

  private async refresh(name: string): Promise<void> {
    const watching = this.here.get(name)
    const [members, holder] = await Promise.all([watching === undefined ? [] : this.store.members(name), this.store.holder(name)])
    const h = this.held.get(name)
    if (h !== undefined && (holder === null || holder.tab !== h.tab)) {
      // Taken over on another node, or lapsed: this tab no longer holds it.
      this.held.delete(name)
      clearTimeout(h.timer)
      this.lost(name, h, holder)
    }
    this.frames.announce(name, new Set(watching?.values()), members, holder)
  }

  private lost(key: string, h: Held, by: LockHolder | null): void {
    if (h.by === null) return
    this.parts.get(h.by)?.locks.delete(key)
    h.by.send({ op: 'lock-lost', key, by })
  }

  private async renew(): Promise<void> {
    const presence: Array<[string, string]> = []
    for (const [topic, tabs] of this.here) for (const tab of tabs.keys()) presence.push([topic, tab])
    for (const id of this.leaving.keys()) {
      const i = id.indexOf('\u0000')
      presence.push([id.slice(0, i), id.slice(i + 1)])
    }
    const locks: Array<[string, string]> = [...this.held].map(([key, h]) => [key, h.tab])
    if (presence.length === 0 && locks.length === 0) return
    const missing = await this.store.renew(presence, locks, this.settings.leaseMs)
    // Lapsed while this node still serves the tab (a stalled node, Redis restarted empty): present it again.
    for (const [topic, tab] of missing) {
      const member = this.said.get(`${topic}\u0000${tab}`)
      if (member === undefined) continue
      await this.store.present(topic, member, this.settings.leaseMs, this.node)
      this.touch(topic)
    }
  }

  private async sweep(): Promise<void> {
    for (const name of new Set([...this.here.keys(), ...this.held.keys()])) this.touch(name)
  }

  private dropLocal(p: Participant, topic: string, tab: string, fromPart = true): void {
    const tabs = this.here.get(topic)
    if (tabs?.get(tab) === p) {
      tabs.delete(tab)
      if (tabs.size === 0) this.here.delete(topic)
    }
    if (fromPart) {
      this.parts.get(p)?.topics.delete(topic)
      this.said.delete(`${topic}\u0000${tab}`)
    }
  }

  private cancelLeave(topic: string, tab: string): void {
    const id = `${topic}\u0000${tab}`
    const t = this.leaving.get(id)
    if (t !== undefined) {
      clearTimeout(t)
      this.leaving.delete(id)
    }
  }

  private part(p: Participant): { topics: Map<string, string>; locks: Set<string> } {
    let part = this.parts.get(p)
    if (part === undefined) this.parts.set(p, (part = { topics: new Map(), locks: new Set() }))
    return part
  }

  /** At most `maxTopicsPerConnection` presence topics, and as many locks, per connection. */
  private room(p: Participant, name: string, what: 'topics' | 'locks'): boolean {
    const part = this.parts.get(p)
    const held = what === 'topics' ? part?.topics : part?.locks
    if (held === undefined || held.has(name) || held.size < this.maxPerConnection) return true
    p.send({ op: 'error', code: 'bad_request', message: `a connection may hold at most ${this.maxPerConnection} presence ${what === 'topics' ? 'topics' : 'locks'}`, topic: name })
    return false
  }

  private async permitted(p: Participant, topic: string, check: Check): Promise<boolean> {
    const ok = await this.allowed(p.user, topic)
    if (ok && check.withdrawn === false) return true
    if (check.withdrawn !== 'released') p.send({ op: 'error', code: 'forbidden', message: 'not allowed on this topic', topic })
    return false
  }

  /** A store call; on failure the participant (if any) is told the feature is unavailable. */
  private async tryStore(p: Participant | null, name: string, fn: () => Promise<unknown>): Promise<boolean> {
    try {
      await fn()
      return true
    } catch (err) {
      this.onError('collab store', err)
      p?.send({ op: 'error', code: 'unavailable', message: 'presence is unavailable right now', topic: name })
      return false
    }
  }

  /** Run `fn` from a timer or callback: nothing may escape. */
  private guard(where: string, fn: () => Promise<void> | void): void {
    try {
      Promise.resolve(fn()).catch((err: unknown) => this.onError(where, err))
    } catch (err) {
      this.onError(where, err)
    }
  }
}
