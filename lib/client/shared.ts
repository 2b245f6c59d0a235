/**
 * One connection per browser, not per tab. The tabs of an origin that use
 * the same config URL elect a leader with the Web Locks API: the tab that
 * holds the lock runs the connection (a `Client`) for the union of every
 * tab's topics and relays what it receives over a BroadcastChannel. When
 * the leader closes, crashes or is frozen, the browser hands the lock to
 * the next tab in line, which connects and resumes each topic from the
 * cursor every tab already holds: nothing is lost, and the few events a
 * tab could see twice are dropped by id.
 *
 * Why Web Locks and not a SharedWorker: a lock is released by the browser
 * itself when its tab goes away (closed, crashed, navigated), which is
 * exactly the handover signal, and each tab's own lock tells the leader
 * when a tab is gone; the connection stays in a page, so the app's
 * `token()` hook, cookies, devtools and CSP work as they do without
 * sharing; and a SharedWorker needs its own script URL (and `worker-src`)
 * that an app bundling this client does not have.
 *
 * Presence and soft locks stay on the tab's own connection (opened the
 * first time the tab asks for either): their liveness is the tab's, so a
 * tab that crashes must lose its lock after the grace even while the
 * leader lives on.
 */
import {
  Client, Observable, call, tabId,
  type ClientEvents, type ClientOptions, type ClientState, type Diagnosis, type Globals, type HeldLock,
  type Presence, type RealtimeClient, type RealtimeEvent, type RefusedLock, type Transport,
} from './client'
import { PROTOCOL } from './wire'
import { SEEN, type ChannelCtor, type ChannelLike, type Lead, type LockManagerLike, type Note } from './shared-notes'

export class SharedClient extends Observable implements RealtimeClient {
  readonly tab: string
  private readonly peer: string
  private readonly name: string
  private readonly channel: ChannelLike
  private readonly handlers = new Map<string, Set<(e: RealtimeEvent) => void>>()
  private readonly cursors = new Map<string, string>()
  private readonly seen = new Map<string, Set<string>>()
  private lead: Lead | undefined
  /** Gives the leader lock back. */
  private resign: (() => void) | undefined
  /** This page's place in the queue for the leader lock. */
  private queued: AbortController | undefined
  /** Gives this page's own lock back. */
  private release: (() => void) | undefined
  private closed = false
  private paused = false
  /** Leading alone: this page could not take part in the election. */
  private alone = false
  private own: Client | undefined

  constructor(private readonly o: ClientOptions, private readonly locks: LockManagerLike, Channel: ChannelCtor) {
    super()
    const g = globalThis as Globals
    this.tab = tabId(g)
    this.peer = Array.from(g.crypto!.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, '0')).join('')
    this.name = `cms-realtime/${PROTOCOL}:${new URL(o.configUrl, g.location?.href).href}`
    this.channel = new Channel(this.name)
    this.channel.onmessage = (m) => this.note(m.data as Note)
    // This page's own lock, held while it lives: the leader waits on it to
    // learn that the page is gone. Only then does the page say hello, so the
    // leader's wait can never be granted before the page holds it.
    this.locks.request(`${this.name}#${this.peer}`, {}, () => new Promise<void>((release) => {
      this.release = release
      if (this.closed) return release()
      this.post(this.hello())
      this.campaign()
    })).catch(() => {
      // Locks refused here (a sandboxed frame): lead alone, without telling other tabs.
      this.alone = true
      if (!this.closed && this.lead === undefined) this.takeOver()
    })
    // A leader that leaves or is frozen hands over; it rejoins when it comes back.
    const doc = (globalThis as { document?: { addEventListener?(name: string, fn: () => void): void } }).document
    doc?.addEventListener?.('freeze', () => this.pause())
    doc?.addEventListener?.('resume', () => this.resume())
    g.addEventListener?.('pagehide', () => this.pause())
    g.addEventListener?.('pageshow', () => this.resume())
  }

  // ---- the tab's API ----

  subscribe<T = unknown>(topic: string, handler: (event: RealtimeEvent<T>) => void): () => void {
    let set = this.handlers.get(topic)
    if (set === undefined) {
      this.handlers.set(topic, (set = new Set()))
      if (this.lead !== undefined) this.want(this.lead, this.peer, topic)
      else if (this.release !== undefined) this.post({ t: 'sub', peer: this.peer, topic })
      // (before this page holds its own lock, the hello sent once it does names the topic)
    }
    const h = handler as (e: RealtimeEvent) => void
    set.add(h)
    return () => {
      if (!set.delete(h) || set.size > 0 || this.handlers.get(topic) !== set) return
      this.forget(topic)
      if (this.lead !== undefined) this.unwant(this.lead, this.peer, topic)
      else if (this.release !== undefined) this.post({ t: 'unsub', peer: this.peer, topic })
    }
  }

  presence(topic: string, meta?: unknown): Presence {
    return this.collab().presence(topic, meta)
  }

  async lock(key: string, options?: { takeover?: boolean }): Promise<HeldLock | RefusedLock> {
    const c = this.collab()
    if (c.state === 'connecting') {
      // Opened on first use: wait for it as long as a WebSocket may take to open (on any transport).
      await new Promise<void>((resolve) => {
        const done = (): void => {
          off()
          clearTimeout(timer)
          resolve()
        }
        const off = c.on('state', (s) => s !== 'connecting' && done())
        const timer = setTimeout(done, this.o.openTimeoutMs ?? 10_000)
      })
    }
    return c.lock(key, options)
  }

  reconnect(): void {
    if (this.closed) return
    if (this.lead !== undefined) this.lead.engine.reconnect()
    else this.post({ t: 'reconnect' })
    this.own?.reconnect()
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    this.post({ t: 'bye', peer: this.peer })
    this.queued?.abort()
    this.abdicate()
    this.release?.()
    this.channel.close()
    this.own?.close()
    this.set('offline')
  }

  // ---- leading ----

  /** Queue for the leader lock; granted when no tab leads. */
  private campaign(): void {
    if (this.closed || this.paused || this.queued !== undefined || this.lead !== undefined) return
    const queued = (this.queued = new AbortController())
    this.locks.request(this.name, { signal: queued.signal }, () => new Promise<void>((resign) => {
      if (this.queued === queued) this.queued = undefined
      if (this.closed || this.paused) return resign()
      this.resign = resign
      this.takeOver()
    })).catch(() => {}) // aborted: closed or paused while queued
  }

  private takeOver(): void {
    const engine = new Client({ ...this.o, share: false }, {
      cursor: (topic, cursor) => {
        if (this.handlers.has(topic)) this.cursors.set(topic, cursor)
        this.post({ t: 'cursor', topic, cursor })
      },
      withdrawn: (topic) => {
        const lead = this.lead
        lead?.interest.delete(topic)
        lead?.unsubscribe.delete(topic)
        this.post({ t: 'withdrawn', topic })
        this.forget(topic)
      },
    })
    const lead: Lead = { engine, interest: new Map(), unsubscribe: new Map(), watching: new Map(), stop: [] }
    this.lead = lead
    const state = (): void => {
      this.mirror(engine.state, engine.diagnosis, engine.transport)
      this.post({ t: 'state', state: engine.state, diagnosis: engine.diagnosis, transport: engine.transport })
    }
    lead.stop.push(
      engine.on('state', state),
      engine.on('diagnosis', state),
      engine.on('transport', state),
      engine.on('resync', (topic) => {
        this.post({ t: 'resync', topic })
        this.emit('resync', topic)
      }),
      engine.on('error', (error) => {
        this.post({ t: 'error', error })
        this.emit('error', error)
      }),
      engine.on('signed-out', ({ reason }) => {
        this.post({ t: 'signed-out', reason })
        this.emit('signed-out', { reason })
      }),
    )
    // Before the engine's first await: these topics ride on its handshake.
    for (const topic of this.handlers.keys()) this.want(lead, this.peer, topic, this.cursors.get(topic))
    this.post({ t: 'leader' })
    state()
  }

  /** Stop leading: the connection closes and the next tab in line takes over. */
  private abdicate(): void {
    const lead = this.lead
    if (lead === undefined) return
    this.lead = undefined
    for (const stop of lead.stop) stop()
    for (const w of lead.watching.values()) w.abort()
    lead.engine.close()
    this.resign?.()
    this.resign = undefined
  }

  /** `peer` wants `topic`: the first one subscribes (resuming from its cursor); later ones learn where it stands. */
  private want(lead: Lead, peer: string, topic: string, cursor?: string | null): void {
    let peers = lead.interest.get(topic)
    if (peers === undefined) {
      lead.interest.set(topic, (peers = new Set()))
      if (cursor != null) lead.engine.seed(topic, cursor)
      lead.unsubscribe.set(topic, lead.engine.subscribe(topic, (e) => {
        this.post({ t: 'event', e })
        this.deliver(e)
      }))
    } else {
      const at = lead.engine.cursorOf(topic)
      if (at !== undefined && peer !== this.peer) this.post({ t: 'cursor', topic, cursor: at })
    }
    peers.add(peer)
    this.watch(lead, peer)
  }

  private unwant(lead: Lead, peer: string, topic: string): void {
    const peers = lead.interest.get(topic)
    if (peers === undefined || !peers.delete(peer) || peers.size > 0) return
    lead.interest.delete(topic)
    lead.unsubscribe.get(topic)?.()
    lead.unsubscribe.delete(topic)
  }

  /** Wait on the page's own lock: granted once the page is gone (closed, crashed), without a word. */
  private watch(lead: Lead, peer: string): void {
    if (peer === this.peer || lead.watching.has(peer)) return
    const w = new AbortController()
    lead.watching.set(peer, w)
    this.locks.request(`${this.name}#${peer}`, { signal: w.signal }, async () => {
      if (this.lead === lead) this.gone(lead, peer)
    }).catch(() => {}) // aborted: this tab stopped leading, or the page said bye
  }

  private gone(lead: Lead, peer: string): void {
    lead.watching.get(peer)?.abort()
    lead.watching.delete(peer)
    for (const topic of [...lead.interest.keys()]) this.unwant(lead, peer, topic)
  }

  // ---- between tabs ----

  private hello(): Note {
    return { t: 'hello', peer: this.peer, topics: [...this.handlers.keys()].map((t) => [t, this.cursors.get(t) ?? null]) }
  }

  private post(note: Note): void {
    if (!this.alone && (!this.closed || note.t === 'bye')) this.channel.postMessage(note)
  }

  private note(n: Note): void {
    if (this.closed || this.alone || typeof n !== 'object' || n === null) return
    const lead = this.lead
    switch (n.t) {
      case 'hello':
        if (lead === undefined) return
        for (const [topic, cursor] of n.topics) this.want(lead, n.peer, topic, cursor)
        this.watch(lead, n.peer)
        return this.post({ t: 'state', state: lead.engine.state, diagnosis: lead.engine.diagnosis, transport: lead.engine.transport })
      case 'sub':
        return lead && this.want(lead, n.peer, n.topic)
      case 'unsub':
        return lead && this.unwant(lead, n.peer, n.topic)
      case 'bye':
        return lead && this.gone(lead, n.peer)
      case 'reconnect':
        return lead?.engine.reconnect()
      case 'leader':
        // A new leader: tell it what this page wants, and from where.
        if (lead === undefined && !this.paused && this.release !== undefined) this.post(this.hello())
        return
      case 'event':
        return this.deliver(n.e)
      case 'cursor':
        if (this.handlers.has(n.topic)) this.cursors.set(n.topic, n.cursor)
        return
      case 'state':
        return lead === undefined ? this.mirror(n.state, n.diagnosis, n.transport ?? null) : undefined
      case 'resync':
        return this.emit('resync', n.topic)
      case 'error':
        return this.emit('error', n.error)
      case 'withdrawn':
        return this.forget(n.topic)
      case 'signed-out':
        return this.emit('signed-out', { reason: n.reason })
    }
  }

  /** Hidden for good or frozen: a leader hands over (a frozen tab cannot relay). */
  private pause(): void {
    if (this.closed || this.paused) return
    this.paused = true
    this.queued?.abort()
    this.queued = undefined
    if (this.lead !== undefined) {
      this.post({ t: 'bye', peer: this.peer })
      this.abdicate()
    }
  }

  private resume(): void {
    if (this.closed || !this.paused) return
    this.paused = false
    if (this.alone) return this.takeOver()
    this.post(this.hello())
    this.campaign()
  }

  // ---- this tab ----

  private deliver(e: RealtimeEvent): void {
    const set = this.handlers.get(e.topic)
    if (set === undefined) return
    let seen = this.seen.get(e.topic)
    if (seen === undefined) this.seen.set(e.topic, (seen = new Set()))
    if (seen.has(e.id)) return
    seen.add(e.id)
    if (seen.size > SEEN) seen.delete(seen.values().next().value!)
    this.cursors.set(e.topic, e.id)
    for (const h of set) call(h, e)
  }

  private forget(topic: string): void {
    this.handlers.delete(topic)
    this.cursors.delete(topic)
    this.seen.delete(topic)
  }

  private collab(): Client {
    if (this.own === undefined) {
      this.own = new Client({ ...this.o, share: false })
      // Its refusals concern this tab's presence and locks (withdrawn, `not_holder`): the page hears them here.
      this.own.on('error', (error) => this.emit('error', error))
    }
    return this.own
  }

  private mirror(state: ClientState, diagnosis: Diagnosis | null, transport: Transport | null): void {
    this.diagnosed(diagnosis)
    this.set(state, transport)
  }
}
