/**
 * This tab's presence and soft locks, on whatever connection the client
 * holds: handles for the page, the frames to (re)send, and what the
 * server's answers mean for them. The connection cycle is the client's;
 * this only needs to send and to know whether it can.
 */
import { call } from './observable'
import type { HeldLock, Presence, RefusedLock } from './types'
import type { LockHolder, PresenceMember, WireFrame } from './wire'

interface PresenceState {
  meta: unknown
  members: PresenceMember[]
  lock: LockHolder | null
  you: string | undefined
  tab: string | undefined
  listeners: Set<(p: Presence) => void>
  handle: Presence
}

interface LockState {
  listeners: Set<(e: { key: string; by: LockHolder | null }) => void>
  handle: HeldLock
}

export class TabCollab {
  private readonly presences = new Map<string, PresenceState>()
  private readonly locks = new Map<string, LockState>()
  /** Lock requests awaiting the server's answer, by key. */
  private readonly asking = new Map<string, Array<{ resolve: (l: HeldLock | RefusedLock) => void; reject: (e: Error) => void }>>()

  constructor(
    private readonly tab: string,
    /** Send a frame if the connection is live (dropped otherwise: `rejoin` resends on the next one); `keepalive`: the page is going. */
    private readonly send: (frame: object, keepalive?: boolean) => void,
    private readonly live: () => boolean,
  ) {}

  presence(topic: string, meta: unknown): Presence {
    const existing = this.presences.get(topic)
    if (existing !== undefined) {
      existing.handle.update(meta)
      return existing.handle
    }
    const state: PresenceState = { meta, members: [], lock: null, you: undefined, tab: undefined, listeners: new Set(), handle: undefined as never }
    const self = this
    state.handle = {
      topic,
      get tab() { return state.tab },
      get members() { return state.members },
      get lock() { return state.lock },
      get you() { return state.you },
      on: (_name, listener) => {
        state.listeners.add(listener)
        return () => void state.listeners.delete(listener)
      },
      update(next) {
        state.meta = next
        if (self.presences.get(topic) === state) self.send({ op: 'presence', topic, tab: self.tab, meta: next })
      },
      leave() {
        if (self.presences.get(topic) !== state) return
        self.presences.delete(topic)
        self.send({ op: 'leave', topic })
      },
    }
    this.presences.set(topic, state)
    this.send({ op: 'presence', topic, tab: this.tab, meta })
    return state.handle
  }

  lock(key: string, options: { takeover?: boolean } = {}): Promise<HeldLock | RefusedLock> {
    if (!this.live()) return Promise.reject(new Error('cms-realtime: locks need a connection (not yet, or not now)'))
    const held = this.locks.get(key)
    if (held !== undefined && !options.takeover) return Promise.resolve(held.handle)
    return new Promise((resolve, reject) => {
      const waiting = this.asking.get(key) ?? []
      waiting.push({ resolve, reject })
      this.asking.set(key, waiting)
      this.send(options.takeover ? { op: 'lock', key, tab: this.tab, takeover: true } : { op: 'lock', key, tab: this.tab })
    })
  }

  /** The topics this tab is present on or holds a lock of: what an HTTP transport carries when nothing is subscribed (it needs a topic to open). */
  topics(): string[] {
    return [...new Set([...this.presences.keys(), ...this.locks.keys()])]
  }

  /** Rejoin presence and reclaim locks on a new connection (same tab: within the grace, nothing flickers). */
  rejoin(): void {
    for (const [topic, p] of this.presences) this.send({ op: 'presence', topic, tab: this.tab, meta: p.meta })
    for (const key of this.locks.keys()) this.send({ op: 'lock', key, tab: this.tab })
  }

  /** Lock requests the server will not answer now: rejected (the caller may retry once live). */
  dropAsking(why: string): void {
    const all = [...this.asking.values()].flat()
    this.asking.clear()
    for (const w of all) w.reject(new Error(`cms-realtime: ${why}`))
  }

  /** Leaving the page: out of presence and locks at once, not after the server's grace. */
  farewell(): void {
    for (const topic of this.presences.keys()) this.send({ op: 'leave', topic }, true)
    for (const key of this.locks.keys()) this.send({ op: 'unlock', key }, true)
  }

  /** The server took this tab out of `topic`'s presence: no members, no lock, not rejoined; listeners hear it once. */
  withdraw(topic: string): boolean {
    const p = this.presences.get(topic)
    if (p === undefined) return false
    this.presences.delete(topic)
    p.members = []
    p.lock = null
    for (const fn of p.listeners) call(fn, p.handle)
    return true
  }

  /** An `error` frame: a lock request it answers is rejected, a reclaim it refuses is a lost lock. */
  refused(f: Extract<WireFrame, { op: 'error' }>): void {
    // A server older than locks answers `unknown_op` without a topic: nothing it will ever grant.
    if (f.code === 'unknown_op' && f.topic === undefined && this.asking.size > 0) this.dropAsking('the server does not support locks')
    const waiting = f.topic === undefined ? undefined : this.asking.get(f.topic)
    if (waiting !== undefined) {
      this.asking.delete(f.topic!)
      for (const w of waiting) w.reject(new Error(`cms-realtime: lock ${f.code}: ${f.message}`))
    } else if (f.topic !== undefined && this.locks.has(f.topic)) {
      this.lost(f.topic, null) // reclaiming after a reconnect was refused
    }
  }

  /** The frames that are presence's and locks' own; false for any other. */
  frame(f: WireFrame): boolean {
    switch (f.op) {
      case 'present': {
        const p = this.presences.get(f.topic)
        if (p !== undefined) {
          p.you = f.user
          p.tab = f.tab
        }
        return true
      }
      case 'presence': {
        const p = this.presences.get(f.topic)
        if (p === undefined) return true
        p.members = f.members
        p.lock = f.lock
        for (const fn of p.listeners) call(fn, p.handle)
        return true
      }
      case 'lock': {
        const waiting = this.asking.get(f.key) ?? []
        this.asking.delete(f.key)
        if (f.result === 'held') {
          const handle = this.granted(f.key)
          for (const w of waiting) w.resolve(handle)
        } else {
          // A refusal of a reclaim after reconnect: someone took it meanwhile.
          if (waiting.length === 0) this.lost(f.key, f.holder)
          for (const w of waiting) w.resolve({ held: false, key: f.key, holder: f.holder })
        }
        return true
      }
      case 'lock-lost':
        this.lost(f.key, f.by)
        return true
      case 'unlocked':
        return true
      default:
        return false
    }
  }

  private granted(key: string): HeldLock {
    const existing = this.locks.get(key)
    if (existing !== undefined) return existing.handle
    const state: LockState = { listeners: new Set(), handle: undefined as never }
    state.handle = {
      held: true,
      key,
      on: (_name, listener) => {
        state.listeners.add(listener)
        return () => void state.listeners.delete(listener)
      },
      release: () => {
        if (this.locks.get(key) !== state) return
        this.locks.delete(key)
        this.send({ op: 'unlock', key })
      },
    }
    this.locks.set(key, state)
    return state.handle
  }

  private lost(key: string, by: LockHolder | null): void {
    const state = this.locks.get(key)
    if (state === undefined) return
    this.locks.delete(key)
    for (const fn of state.listeners) call(fn, { key, by })
  }
}
