/**
 * The browser client: reads config, connects over WebSocket, falls back to
 * Server-Sent Events when the upgrade does not get through, keeps probing
 * the WebSocket, and never loses or repeats an event across reconnects and
 * switches (each topic's cursor is sent back as `since`). No Node built-ins
 * and no DOM types: the transports are structural, so Node tests inject
 * `ws` and `eventsource` and run this very code.
 */
import { BACKOFF, backoff, type BackoffOptions } from './backoff'
import { encodeCursors } from './cursor-vector'
import { causeOf, PROTOCOL, type DiagnosisCause, type HandshakeSeen, type LockHolder, type PresenceMember, type WireConfig, type WireFrame } from './wire'

export type { LockHolder, PresenceMember } from './wire'

/** Presence on one topic, from `rt.presence(topic, meta)`. */
export interface Presence {
  readonly topic: string
  /** Everyone present, one entry per tab (this tab included), as the server last said. */
  readonly members: readonly PresenceMember[]
  /** Who holds the topic's lock (`rt.lock(topic)`), or null. */
  readonly lock: LockHolder | null
  /** This tab's user id, as the server knows it (once joined). */
  readonly you: string | undefined
  /**
   * This tab as others see it (once joined): `member.tab === presence.tab` is
   * this tab; same `user` as `you`, other tab: "you, in another tab". The
   * server derives it from the user and the client's own tab id, which it
   * never shows, so no one can pose as this tab.
   */
  readonly tab: string | undefined
  /** Members and lock changed (also once after joining). Returns the function that stops listening. */
  on(name: 'change', listener: (p: Presence) => void): () => void
  /** Change what others see of this tab (what it views, which field it edits). */
  update(meta: unknown): void
  /** Leave now (no grace). */
  leave(): void
}

/** A soft lock this tab holds, from `rt.lock(key)`. */
export interface HeldLock {
  readonly held: true
  readonly key: string
  /** Lost: taken over (`by` says who), released by the server, or refused when reclaimed after a reconnect. */
  on(name: 'lost', listener: (e: { key: string; by: LockHolder | null }) => void): () => void
  release(): void
}

/** `rt.lock(key)` when another tab holds the lock. */
export interface RefusedLock {
  readonly held: false
  readonly key: string
  readonly holder: LockHolder
}

/** A handler slot that accepts `ws`'s and the DOM's own event types (checked bivariantly). */
type Handler<E> = { bivarianceHack(event: E): void }['bivarianceHack']

export interface WebSocketLike {
  onopen: Handler<unknown> | null
  onmessage: Handler<{ data: unknown }> | null
  onclose: Handler<{ code: number; reason?: string }> | null
  onerror: Handler<unknown> | null
  send(data: string): void
  close(code?: number, reason?: string): void
}
export type WebSocketCtor = new (url: string, protocols?: string | string[]) => WebSocketLike

export interface EventSourceLike {
  readonly readyState: number
  onopen: Handler<unknown> | null
  onmessage: Handler<{ data: unknown }> | null
  onerror: Handler<unknown> | null
  close(): void
}
export type EventSourceCtor = new (url: string) => EventSourceLike

export type FetchLike = (url: string, init?: {
  method?: string
  body?: string
  headers?: Record<string, string>
  cache?: 'no-store'
  credentials?: 'same-origin'
  keepalive?: boolean
}) => Promise<{ ok: boolean; status: number; json(): Promise<unknown>; headers?: { get(name: string): string | null } }>

/**
 * - `connecting`: reading config or opening the WebSocket;
 * - `live`: the WebSocket is open;
 * - `fallback`: events come over Server-Sent Events (the WebSocket is retried in the background);
 * - `manual-refresh`: the server pushes nothing; the UI should offer a refresh button. Nothing is retried;
 * - `offline`: nothing gets through; retrying with backoff;
 * - `signed-out`: the server refused the credentials (401) or ended the
 *   session (`rt.disconnect`, an expired session: close 4401). Nothing is
 *   retried: ask the user to sign in, then call `reconnect()`.
 */
export type ClientState = 'connecting' | 'live' | 'fallback' | 'manual-refresh' | 'offline' | 'signed-out'

export interface RealtimeEvent<T = unknown> {
  topic: string
  /** Cursor of this event (opaque). */
  id: string
  type: string
  data: T
}

export interface Diagnosis {
  cause: DiagnosisCause
  /** The server's refusal reason, for `refused`. */
  detail?: string
}

export interface ClientEvents {
  state: ClientState
  /** History could not cover a gap on this topic: refetch its data. */
  resync: string
  /** Why the WebSocket is not in use (`null` once it is live again). */
  diagnosis: Diagnosis | null
  /**
   * The server refused something: a subscription (`forbidden`), or took one
   * away (`forbidden` with the topic: access was withdrawn, and the topic's
   * handlers were dropped).
   */
  error: { code: string; message: string; topic?: string }
  /** The session is over (see the `signed-out` state): show a sign-in prompt, then call `reconnect()`. */
  'signed-out': { reason: string }
}

export interface ClientOptions {
  /** `GET <path>/config` of the server, absolute or relative to the page. */
  configUrl: string
  /** Default: the global `WebSocket`. Inject `ws` in Node. */
  WebSocket?: WebSocketCtor
  /** Default: the global `EventSource`; `null` disables the fallback on this client. */
  EventSource?: EventSourceCtor | null
  /** Default: the global `fetch`. */
  fetch?: FetchLike
  /** Reconnection delays; see `BackoffOptions`. */
  backoff?: Partial<BackoffOptions>
  /** A WebSocket not open after this long has failed. Default 10000. */
  openTimeoutMs?: number
  /** After a quiet heartbeat period the client pings; no answer within this long means a dead link. Default 10000. */
  heartbeatTimeoutMs?: number
  /** Report the diagnosis once to `POST <path>/diagnostics`. Default true. */
  report?: boolean
  /**
   * For a CMS whose credential is a bearer token (a JWT in memory or
   * localStorage) rather than a cookie: called before every (re)connect,
   * so a refreshed token is used. The client trades it for a one-time
   * ticket (`POST <path>/ticket`, with `Authorization: Bearer`) and opens
   * the WebSocket or event stream with that ticket: browsers cannot set
   * headers on either, and the token itself never appears in a URL.
   * Return `null` when there is no signed-in user (state `signed-out`).
   */
  token?: () => string | null | undefined | Promise<string | null | undefined>
  /**
   * Share one connection among all tabs of this origin that use the same
   * `configUrl`: one tab leads and holds the connection, the others get
   * their events through it, and another takes over, resuming from the
   * cursors, when the leader closes or is frozen. Default: true in a
   * browser (with the Web Locks API and BroadcastChannel) when there is no
   * `token` hook, since cookies make every tab the same user; with `token`,
   * tabs may be different users, so pass `true` only if they are not.
   * `false`: this tab holds its own connection. Presence and locks always
   * use the tab's own connection (see docs/client.md).
   */
  share?: boolean
}

export interface RealtimeClient {
  readonly state: ClientState
  /** This tab's own id (kept in sessionStorage, so a reload is the same tab and takes its locks back); others see a hash of it. */
  readonly tab: string
  /**
   * Be present on `topic` with `meta` (small JSON: what this tab views or
   * edits) and see who else is. Needs the WebSocket; rejoined after every
   * reconnect; left on `pagehide`.
   */
  presence(topic: string, meta?: unknown): Presence
  /**
   * Ask for the soft lock on `key` (a topic the user may read):
   * `{ held: true }` with `release()` and a `lost` event, or
   * `{ held: false, holder }`. `takeover: true` takes it from its holder,
   * who is told at once. Rejects when the WebSocket is not live or the
   * server refuses (`forbidden`, `unavailable`). Reclaimed after a
   * reconnect; released on `pagehide`.
   */
  lock(key: string, options?: { takeover?: boolean }): Promise<HeldLock | RefusedLock>
  readonly diagnosis: Diagnosis | null
  /** Receive the events of `topic`; returns the function that stops. */
  subscribe<T = unknown>(topic: string, handler: (event: RealtimeEvent<T>) => void): () => void
  on<K extends keyof ClientEvents>(name: K, listener: (value: ClientEvents[K]) => void): () => void
  /**
   * Start over now (config, then WebSocket), forgetting the backoff: after
   * signing in again from `signed-out`, or to retry at once when `offline`.
   */
  reconnect(): void
  /** Stop for good: close every transport and timer. */
  close(): void
}

export type Globals = Partial<{
  sessionStorage: { getItem(k: string): string | null; setItem(k: string, v: string): void }
  WebSocket: WebSocketCtor
  EventSource: EventSourceCtor
  fetch: FetchLike
  location: { href: string }
  crypto: { getRandomValues(a: Uint8Array): Uint8Array }
  addEventListener(name: string, fn: () => void): void
  removeEventListener(name: string, fn: () => void): void
}>

const OPEN = 1 // EventSource.OPEN
const CLOSED = 2 // EventSource.CLOSED
const DISABLED = 4000 // close code: the channel was switched off at run time
const SESSION_ENDED = 4401 // close code: the session ended; retrying with the same credentials is pointless
const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'

/**
 * What a tab sharing its connection needs to see of the connection it
 * leads (`shared.ts`): cursors that do not come with an event, and
 * subscriptions the server withdrew.
 */
export interface Tap {
  cursor(topic: string, cursor: string): void
  withdrawn(topic: string): void
}

/** What every client shows the page: its state and diagnosis, and the listeners to tell of changes. */
export abstract class Observable {
  state: ClientState = 'connecting'
  diagnosis: Diagnosis | null = null
  private readonly listeners = new Map<string, Set<(v: never) => void>>()

  on<K extends keyof ClientEvents>(name: K, listener: (value: ClientEvents[K]) => void): () => void {
    let set = this.listeners.get(name)
    if (set === undefined) this.listeners.set(name, (set = new Set()))
    set.add(listener)
    return () => void set.delete(listener)
  }

  protected set(state: ClientState): void {
    if (state === this.state) return
    this.state = state
    this.emit('state', state)
  }

  /** A new diagnosis (told once per change). */
  protected diagnosed(d: Diagnosis | null): void {
    if (d?.cause === this.diagnosis?.cause && d?.detail === this.diagnosis?.detail) return
    this.diagnosis = d
    this.emit('diagnosis', d)
  }

  protected emit<K extends keyof ClientEvents>(name: K, value: ClientEvents[K]): void {
    for (const fn of this.listeners.get(name) ?? []) call(fn as (v: ClientEvents[K]) => void, value)
  }
}

/** One tab, one connection: the engine behind every client (see `shared.ts` for tabs sharing one). */
export class Client extends Observable implements RealtimeClient {
  private readonly handlers = new Map<string, Set<(e: RealtimeEvent) => void>>()
  /** Per topic: where to resume (`since`). */
  private readonly cursors = new Map<string, string>()
  /** Per topic: id of the last event handed out, so a replay overlap is never shown twice. */
  private readonly last = new Map<string, string>()
  private readonly base: string
  private readonly WS: WebSocketCtor | undefined
  private readonly ES: EventSourceCtor | undefined
  private readonly fetch: FetchLike
  private readonly bo: BackoffOptions
  private cfg: WireConfig | undefined
  private ws: WebSocketLike | undefined
  private open = false
  private es: EventSourceLike | undefined
  private timer: ReturnType<typeof setTimeout> | undefined
  private beat: ReturnType<typeof setTimeout> | undefined
  private attempt = 0
  /** No (re)connection attempt before this time (epoch ms): the server's `Retry-After`. */
  private notBefore = 0
  private closed = false
  private reported = false
  private reopening = false
  readonly tab: string
  private readonly presences = new Map<string, PresenceState>()
  private readonly locks = new Map<string, LockState>()
  /** Bumped by each start() and by each stream (re)open or close: an await that comes back to a newer one gives up. */
  private gen = 0
  private streamGen = 0

  constructor(private readonly o: ClientOptions, private readonly tap?: Tap) {
    super()
    const g = globalThis as Globals
    this.WS = o.WebSocket ?? g.WebSocket
    this.ES = o.EventSource === null ? undefined : o.EventSource ?? g.EventSource
    this.fetch = o.fetch ?? ((url, init) => g.fetch!(url, init))
    this.base = new URL(o.configUrl, g.location?.href).href
    this.bo = { ...BACKOFF, ...o.backoff }
    this.tab = tabId(g)
    // Leaving the page: out of presence and locks at once, not after the grace.
    g.addEventListener?.('pagehide', this.onPagehide)
    // Back online: try now rather than at the end of a long backoff.
    g.addEventListener?.('online', this.onOnline)
    void this.start()
  }

  private readonly onPagehide = (): void => this.farewell()
  private readonly onOnline = (): void => {
    if (!this.closed && this.state !== 'live' && this.state !== 'manual-refresh' && this.state !== 'signed-out') this.reconnect()
  }

  subscribe<T = unknown>(topic: string, handler: (event: RealtimeEvent<T>) => void): () => void {
    let set = this.handlers.get(topic)
    if (set === undefined) {
      this.handlers.set(topic, (set = new Set()))
      if (this.open) this.sub(topic)
      this.restream()
    }
    const h = handler as (e: RealtimeEvent) => void
    set.add(h)
    return () => {
      if (!set.delete(h) || set.size > 0 || this.handlers.get(topic) !== set) return
      this.handlers.delete(topic)
      this.cursors.delete(topic)
      this.last.delete(topic)
      if (this.open) this.send({ op: 'unsubscribe', topic })
      this.restream()
    }
  }

  /** Where `topic` resumes, or undefined (for a tab that joins a topic this connection already carries). */
  cursorOf(topic: string): string | undefined {
    return this.cursors.get(topic)
  }

  /** Resume `topic` from `cursor` when it is subscribed (a connection taking over from another tab's). */
  seed(topic: string, cursor: string): void {
    if (!this.handlers.has(topic)) this.cursors.set(topic, cursor)
  }

  presence(topic: string, meta: unknown = null): Presence {
    const existing = this.presences.get(topic)
    if (existing !== undefined) {
      existing.handle.update(meta)
      return existing.handle
    }
    const state: PresenceState = { meta, members: [], lock: null, you: undefined, tab: undefined, listeners: new Set(), handle: undefined as never }
    const client = this
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
        if (client.presences.get(topic) === state) client.send({ op: 'presence', topic, tab: client.tab, meta: next })
      },
      leave() {
        if (client.presences.get(topic) !== state) return
        client.presences.delete(topic)
        client.send({ op: 'leave', topic })
      },
    }
    this.presences.set(topic, state)
    this.send({ op: 'presence', topic, tab: this.tab, meta })
    return state.handle
  }

  lock(key: string, options: { takeover?: boolean } = {}): Promise<HeldLock | RefusedLock> {
    if (!this.open) return Promise.reject(new Error('cms-realtime: locks need the live WebSocket'))
    const held = this.locks.get(key)
    if (held !== undefined && !options.takeover) return Promise.resolve(held.handle)
    return new Promise((resolve, reject) => {
      const waiting = (this.asking.get(key) ?? [])
      waiting.push({ resolve, reject })
      this.asking.set(key, waiting)
      this.send(options.takeover ? { op: 'lock', key, tab: this.tab, takeover: true } : { op: 'lock', key, tab: this.tab })
    })
  }

  /** Lock requests awaiting the server's answer, by key. */
  private readonly asking = new Map<string, Array<{ resolve: (l: HeldLock | RefusedLock) => void; reject: (e: Error) => void }>>()

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

  private lockLost(key: string, by: LockHolder | null): void {
    const state = this.locks.get(key)
    if (state === undefined) return
    this.locks.delete(key)
    for (const fn of state.listeners) call(fn, { key, by })
  }

  /** The server took this tab out of `topic`'s presence: no members, no lock, not rejoined; listeners hear it once. */
  private withdrawPresence(topic: string): boolean {
    const p = this.presences.get(topic)
    if (p === undefined) return false
    this.presences.delete(topic)
    p.members = []
    p.lock = null
    for (const fn of p.listeners) call(fn, p.handle)
    return true
  }

  /** Rejoin presence and reclaim locks on a new socket (same tab: within the grace, nothing flickers). */
  private rejoin(): void {
    for (const [topic, p] of this.presences) this.send({ op: 'presence', topic, tab: this.tab, meta: p.meta })
    for (const key of this.locks.keys()) this.send({ op: 'lock', key, tab: this.tab })
  }

  /** Lock requests the server will not answer now: rejected (the caller may retry once live). */
  private dropAsking(why: string): void {
    const all = [...this.asking.values()].flat()
    this.asking.clear()
    for (const w of all) w.reject(new Error(`cms-realtime: ${why}`))
  }

  private farewell(): void {
    for (const topic of this.presences.keys()) this.send({ op: 'leave', topic })
    for (const key of this.locks.keys()) this.send({ op: 'unlock', key })
  }

  reconnect(): void {
    if (this.closed) return
    this.attempt = 0
    if (this.state === 'signed-out') this.set('connecting')
    // The server asked for a wait (`Retry-After`): the attempt comes when it is over.
    if (Date.now() < this.notBefore) return this.retry()
    void this.start()
  }

  close(): void {
    this.farewell()
    this.dropAsking('the client was closed')
    this.closed = true
    // A tab that leads, freezes and leads again makes a client each time: none may stay attached.
    const g = globalThis as Globals
    g.removeEventListener?.('pagehide', this.onPagehide)
    g.removeEventListener?.('online', this.onOnline)
    clearTimeout(this.timer)
    if (this.ws !== undefined) this.drop(this.ws)
    this.closeStream()
    this.set('offline')
  }

  // ---- connection cycle: config → WebSocket → (fallback + probe) ----

  /** Read config and act on it. Every (re)connection starts here, so a switched-off channel is always noticed. */
  private async start(): Promise<void> {
    clearTimeout(this.timer)
    const gen = ++this.gen
    let cfg: WireConfig
    try {
      const r = await this.fetch(this.base, { cache: 'no-store', credentials: 'same-origin' })
      // An app may guard config behind its own sign-in.
      if (r.status === 401) return this.signOut('unauthenticated')
      if (!r.ok) throw new Error('config')
      cfg = (await r.json()) as WireConfig
    } catch {
      if (this.closed) return
      if (this.es === undefined) this.set('offline')
      return this.retry()
    }
    if (this.closed || this.ws !== undefined || this.state === 'signed-out' || gen !== this.gen) return
    this.cfg = cfg
    if (cfg.webSocketEnabled && cfg.url !== undefined && this.WS !== undefined) return this.connect(cfg.url, gen)
    if (!cfg.webSocketEnabled) this.diagnose({ cause: 'disabled' }, false)
    if (cfg.fallback !== null && this.ES !== undefined) {
      if (this.es === undefined) this.stream()
      return this.retry() // the channel may come back: re-read config later
    }
    // Degraded mode: stay quiet, no connection attempts.
    this.closeStream()
    this.set('manual-refresh')
  }

  private async connect(path: string, gen: number): Promise<void> {
    const nonce = Array.from((globalThis as Globals).crypto!.getRandomValues(new Uint8Array(22)), (b) => ALPHABET[b & 63]).join('')
    const url = new URL(path, this.base)
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:'
    url.searchParams.set('nonce', nonce)
    if (this.o.token !== undefined) {
      const ticket = await this.ticket()
      if (ticket === null || this.closed || this.ws !== undefined || gen !== this.gen) return
      url.searchParams.set('ticket', ticket)
    }
    // The first subscriptions ride on the handshake (no round trip after
    // opening), as many as keep the URL short enough for any proxy. Not
    // while the event stream still delivers: its cursors move until the
    // socket opens and the stream is closed, and only then are they read.
    const early = new Set<string>()
    if (this.cfg?.handshakeTopics === true && this.es === undefined) {
      let length = 0
      for (const topic of this.handlers.keys()) {
        length += topic.length + (this.cursors.get(topic)?.length ?? 0) * 1.5 + 2
        if (length > 2000) break
        early.add(topic)
      }
      if (early.size > 0) {
        const topics = [...early]
        url.searchParams.set('topics', topics.join(','))
        if (topics.some((t) => this.cursors.has(t))) url.searchParams.set('since', encodeCursors(topics.map((t) => this.cursors.get(t))))
      }
    }
    const ws = new this.WS!(url.href, PROTOCOL)
    this.ws = ws
    this.timer = setTimeout(() => {
      this.drop(ws)
      this.failed(nonce)
    }, this.o.openTimeoutMs ?? 10_000)
    ws.onopen = () => {
      clearTimeout(this.timer)
      this.open = true
      this.attempt = 0
      // Close the stream before reading cursors: nothing arrives from it
      // after this, and the socket resumes every topic from there.
      this.closeStream()
      this.set('live')
      this.diagnose(null, false)
      for (const topic of this.handlers.keys()) if (!early.has(topic)) this.sub(topic)
      // Dropped while the handshake was on its way: the server subscribed it anyway.
      for (const topic of early) if (!this.handlers.has(topic)) this.send({ op: 'unsubscribe', topic })
      this.rejoin()
      this.alive()
    }
    ws.onmessage = (e) => {
      this.alive()
      this.frame(e.data)
    }
    ws.onclose = (e) => {
      if (this.ws !== ws) return
      const wasOpen = this.open
      this.drop(ws)
      if (this.closed) return
      this.dropAsking('the WebSocket closed')
      if (!wasOpen) return this.failed(nonce)
      if (e.code === SESSION_ENDED) return this.signOut(e.reason || 'session ended')
      if (e.code === DISABLED) return void this.start()
      this.set('connecting')
      this.retry()
    }
    ws.onerror = () => {} // a close follows
  }

  /** The WebSocket did not open: fall back at once, ask the server why, probe again later. */
  private failed(nonce: string): void {
    if (this.cfg?.fallback == null || this.ES === undefined) this.set('offline')
    else if (this.es === undefined) this.stream()
    void this.ask(nonce)
    this.retry()
  }

  private retry(): void {
    clearTimeout(this.timer)
    const wait = Math.max(backoff(this.attempt++, this.bo), this.notBefore - Date.now())
    this.timer = setTimeout(() => void this.start(), wait)
  }

  /**
   * The server asked for `ms` before the next attempt (503 over capacity,
   * `Retry-After`): no attempt before then, whatever the backoff says. Its
   * value is jittered by the server, so refused clients do not return together.
   */
  private holdOff(ms: number): void {
    if (!(ms > 0)) return
    this.notBefore = Math.max(this.notBefore, Date.now() + Math.min(ms, 5 * 60_000))
    this.retry()
  }

  /** Forget `ws` without waiting for its close handshake. */
  private drop(ws: WebSocketLike): void {
    ws.onopen = ws.onmessage = ws.onclose = null
    clearTimeout(this.timer)
    clearTimeout(this.beat)
    if (this.ws === ws) {
      this.ws = undefined
      this.open = false
    }
    try {
      ws.close(1000)
    } catch {
      // not yet open in some browsers: nothing to close
    }
  }

  /** Heartbeat: after a quiet period, ping; no frame within the timeout means a dead link. */
  private alive(): void {
    clearTimeout(this.beat)
    this.beat = setTimeout(() => {
      this.send({ op: 'ping' })
      this.beat = setTimeout(() => {
        if (this.ws === undefined) return
        this.drop(this.ws)
        this.set('connecting')
        this.retry()
      }, this.o.heartbeatTimeoutMs ?? 10_000)
    }, this.cfg?.heartbeatMs ?? 25_000)
  }

  // ---- fallback stream ----

  /** (Re)open the event stream for the current topics, resuming each from its cursor. */
  private stream(): void {
    void this.openStream()
  }

  private async openStream(): Promise<void> {
    const fb = this.cfg?.fallback
    this.closeStream()
    const gen = this.streamGen
    if (fb == null || this.ES === undefined) return
    let ticket: string | null = null
    if (this.o.token !== undefined && this.handlers.size > 0) {
      ticket = await this.ticket()
      if (ticket === null || this.closed || gen !== this.streamGen) return
    }
    // Read after the await: topics and cursors may have moved meanwhile.
    const topics = [...this.handlers.keys()]
    if (topics.length === 0) return this.set('fallback')
    const url = new URL(fb.url, this.base)
    url.searchParams.set('topics', topics.join(','))
    if (topics.some((t) => this.cursors.has(t))) url.searchParams.set('since', encodeCursors(topics.map((t) => this.cursors.get(t))))
    if (ticket !== null) url.searchParams.set('ticket', ticket)
    const es = new this.ES(url.href)
    this.es = es
    es.onopen = () => this.es === es && this.set('fallback')
    es.onmessage = (e) => this.es === es && this.frame(e.data)
    // EventSource retries by itself (with Last-Event-ID) unless the answer
    // was an HTTP error; the WebSocket probe retries the rest.
    es.onerror = () => {
      if (this.es !== es) return
      // A ticket is spent: EventSource's own retry would present it again.
      // Close; the probe loop reopens with a fresh one.
      if (ticket !== null) {
        this.closeStream()
        return this.set('offline')
      }
      if (es.readyState === CLOSED) {
        this.closeStream()
        void this.whyNot(url.href)
      }
      this.set('offline')
    }
  }

  /** EventSource hides the status of a refused stream: ask once, so a 401 means signed out rather than endless retries. */
  private async whyNot(url: string): Promise<void> {
    try {
      const r = await this.fetch(url, { method: 'HEAD', cache: 'no-store', credentials: 'same-origin' })
      if (this.closed || this.open) return
      if (r.status === 401) this.signOut('unauthenticated')
      else if (r.status === 503) this.holdOff(Number(r.headers?.get('Retry-After')) * 1000)
    } catch {
      // offline: the retry loop carries on
    }
  }

  /** The session is over: stop every transport and timer until `reconnect()`. */
  private signOut(reason: string): void {
    if (this.closed) return
    clearTimeout(this.timer)
    if (this.ws !== undefined) this.drop(this.ws)
    this.closeStream()
    const was = this.state
    this.set('signed-out')
    if (was !== 'signed-out') this.emit('signed-out', { reason })
  }

  private closeStream(): void {
    this.streamGen++
    this.es?.close()
    this.es = undefined
  }

  /**
   * Trade the app's token for a one-time ticket. `null` when there is none:
   * signed out (no token, or a 401), or a failure that was left to the retry loop.
   */
  private async ticket(): Promise<string | null> {
    const setback = (): null => {
      if (!this.closed && this.state !== 'signed-out') {
        if (this.es === undefined) this.set('offline')
        this.retry()
      }
      return null
    }
    let token: string | null | undefined
    try {
      token = await this.o.token!()
    } catch {
      return setback()
    }
    if (token === null || token === undefined || token === '') {
      this.signOut('no credentials')
      return null
    }
    try {
      const r = await this.fetch(new URL('ticket', this.base).href, {
        method: 'POST', headers: { Authorization: `Bearer ${token}` }, cache: 'no-store', credentials: 'same-origin',
      })
      if (r.status === 401) {
        this.signOut('unauthenticated')
        return null
      }
      const body = r.ok ? ((await r.json()) as { ticket?: unknown }) : {}
      return typeof body.ticket === 'string' ? body.ticket : setback()
    } catch {
      return setback()
    }
  }

  /** Topics changed while streaming: reopen once, after the caller's loop of subscribes. */
  private restream(): void {
    if (this.reopening || (this.es === undefined && this.state !== 'fallback')) return
    this.reopening = true
    queueMicrotask(() => {
      this.reopening = false
      if (!this.closed && this.ws === undefined) this.stream()
    })
  }

  // ---- frames ----

  private sub(topic: string): void {
    const since = this.cursors.get(topic)
    this.send(since === undefined ? { op: 'subscribe', topic } : { op: 'subscribe', topic, since })
  }

  private send(frame: object): void {
    if (this.open) this.ws?.send(JSON.stringify(frame))
  }

  private frame(text: unknown): void {
    let f: WireFrame
    try {
      f = JSON.parse(String(text)) as WireFrame
    } catch {
      return
    }
    switch (f.op) {
      case 'event': {
        const set = this.handlers.get(f.topic)
        if (set === undefined || this.last.get(f.topic) === f.id) return
        this.cursors.set(f.topic, f.id)
        this.last.set(f.topic, f.id)
        const event: RealtimeEvent = { topic: f.topic, id: f.id, type: f.type, data: f.data }
        for (const h of set) call(h, event)
        return
      }
      case 'subscribed':
        if (f.cursor !== undefined && this.handlers.has(f.topic)) {
          this.cursors.set(f.topic, f.cursor)
          this.tap?.cursor(f.topic, f.cursor)
        }
        return
      case 'unsubscribed': {
        // Access withdrawn (`rt.reauthorize`): the subscription, and the
        // tab's presence there, are over here too (a lock on it comes as `lock-lost`).
        if (f.reason === undefined) return
        const subscribed = this.handlers.has(f.topic)
        const present = this.withdrawPresence(f.topic)
        if (!subscribed && !present) return
        if (subscribed) {
          this.handlers.delete(f.topic)
          this.cursors.delete(f.topic)
          this.last.delete(f.topic)
          this.restream()
          this.tap?.withdrawn(f.topic)
        }
        return this.emit('error', { code: f.reason, message: 'access to this topic was withdrawn', topic: f.topic })
      }
      case 'closed':
        // The SSE stream's last frame: EventSource must not reconnect on its own.
        this.closeStream()
        if (f.code === SESSION_ENDED) return this.signOut(f.reason)
        return void this.start()
      case 'resync':
        return this.emit('resync', f.topic)
      case 'error': {
        // A server older than locks answers `unknown_op` without a topic: nothing it will ever grant.
        if (f.code === 'unknown_op' && f.topic === undefined && this.asking.size > 0) this.dropAsking('the server does not support locks')
        const waiting = f.topic === undefined ? undefined : this.asking.get(f.topic)
        if (waiting !== undefined) {
          this.asking.delete(f.topic!)
          for (const w of waiting) w.reject(new Error(`cms-realtime: lock ${f.code}: ${f.message}`))
        } else if (f.topic !== undefined && this.locks.has(f.topic)) {
          this.lockLost(f.topic, null) // reclaiming after a reconnect was refused
        }
        return this.emit('error', f.topic === undefined ? { code: f.code, message: f.message } : { code: f.code, message: f.message, topic: f.topic })
      }
      case 'present': {
        const p = this.presences.get(f.topic)
        if (p !== undefined) {
          p.you = f.user
          p.tab = f.tab
        }
        return
      }
      case 'presence': {
        const p = this.presences.get(f.topic)
        if (p === undefined) return
        p.members = f.members
        p.lock = f.lock
        for (const fn of p.listeners) call(fn, p.handle)
        return
      }
      case 'lock': {
        const waiting = this.asking.get(f.key) ?? []
        this.asking.delete(f.key)
        if (f.result === 'held') {
          const handle = this.granted(f.key)
          for (const w of waiting) w.resolve(handle)
        } else {
          // A refusal of a reclaim after reconnect: someone took it meanwhile.
          if (waiting.length === 0) this.lockLost(f.key, f.holder)
          for (const w of waiting) w.resolve({ held: false, key: f.key, holder: f.holder })
        }
        return
      }
      case 'lock-lost':
        return this.lockLost(f.key, f.by)
      case 'unlocked':
        return
    }
  }

  // ---- diagnosis ----

  /** Ask the server what it saw for this handshake's nonce. */
  private async ask(nonce: string): Promise<void> {
    let d: Diagnosis
    try {
      const r = await this.fetch(new URL(`${this.cfg!.url!}/diagnostics?nonce=${nonce}`, this.base).href, { cache: 'no-store' })
      const s = (await r.json()) as HandshakeSeen
      if (s.seen === 'refused' && s.retryAfterMs !== undefined && !this.closed && !this.open) {
        // A stream not yet open would be refused the same way: wait it out. One that carries events stays.
        if (this.es?.readyState !== OPEN) {
          this.closeStream()
          this.set('offline')
        }
        this.holdOff(s.retryAfterMs)
      }
      d = s.seen === 'refused' ? { cause: causeOf(s), detail: s.reason } : { cause: causeOf(s) }
    } catch {
      d = { cause: 'offline' }
    }
    if (this.closed || this.open) return
    this.diagnose(d, true, nonce)
    // A 401 will not change by retrying: wait for `reconnect()` after sign-in.
    if (d.cause === 'unauthenticated') this.signOut('unauthenticated')
  }

  /** `nonce`: the handshake the diagnosis is about, so the server counts what it saw itself. */
  private diagnose(d: Diagnosis | null, report: boolean, nonce?: string): void {
    this.diagnosed(d)
    if (!report || d === null || this.reported || this.o.report === false || d.cause === 'offline') return
    this.reported = true
    this.fetch(new URL(`${this.cfg!.url!}/diagnostics`, this.base).href, {
      method: 'POST',
      body: JSON.stringify({ cause: d.cause, transport: this.cfg?.fallback?.transport ?? 'none', ...(nonce === undefined ? {} : { nonce }) }),
      // text/plain: app body parsers skip it, and it needs no CORS preflight.
      headers: { 'Content-Type': 'text/plain;charset=UTF-8' },
      keepalive: true,
    }).catch(() => {})
  }
}

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

const TAB_KEY = 'cms-realtime.tab'

/** This tab's id: sessionStorage is per tab and survives a reload (so the tab takes its locks back). */
export function tabId(g: Globals): string {
  const fresh = Array.from(g.crypto!.getRandomValues(new Uint8Array(16)), (b) => ALPHABET[b & 63]).join('')
  try {
    const kept = g.sessionStorage?.getItem(TAB_KEY)
    if (kept != null && /^[A-Za-z0-9_-]{8,64}$/.test(kept)) return kept
    g.sessionStorage?.setItem(TAB_KEY, fresh)
  } catch {
    // storage blocked (privacy settings): a fresh id per page load
  }
  return fresh
}

/** A throwing handler must not stop the others, nor the client: report it asynchronously. */
export function call<V>(fn: (v: V) => void, v: V): void {
  try {
    fn(v)
  } catch (err) {
    setTimeout(() => {
      throw err
    })
  }
}
