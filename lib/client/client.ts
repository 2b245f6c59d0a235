/**
 * The browser client: reads config, connects over WebSocket, falls back to
 * Server-Sent Events when the upgrade does not get through, keeps probing
 * the WebSocket, and never loses or repeats an event across reconnects and
 * switches (each topic's cursor is sent back as `since`). No Node built-ins
 * and no DOM types: the transports are structural, so Node tests inject
 * `ws` and `eventsource` and run this very code.
 */
import { Attempts, BACKOFF } from './backoff'
import { TabCollab } from './collab'
import { askHandshake, fetchTicket, reportDiagnosis } from './http'
import { Ladder } from './fallback'
import { handshakeTopics, Socket } from './transports/websocket'
import { call, Observable, randomId, tabId } from './observable'
import type { ClientOptions, Diagnosis, FetchLike, Globals, HeldLock, Presence, RealtimeClient, RealtimeEvent, RefusedLock, Tap, WebSocketCtor } from './types'
import type { WireConfig, WireFrame } from './wire'

// The public types live in types.ts; the shared client and the index read them here too.
export type * from './types'
export { call, Observable, tabId } from './observable'

const DISABLED = 4000 // close code: the channel was switched off at run time
const SESSION_ENDED = 4401 // close code: the session ended; retrying with the same credentials is pointless

/** One tab, one connection: the engine behind every client (see `shared.ts` for tabs sharing one). */
export class Client extends Observable implements RealtimeClient {
  private readonly handlers = new Map<string, Set<(e: RealtimeEvent) => void>>()
  /** Per topic: where to resume (`since`). */
  private readonly cursors = new Map<string, string>()
  /** Per topic: id of the last event handed out, so a replay overlap is never shown twice. */
  private readonly last = new Map<string, string>()
  private readonly base: string
  private readonly WS: WebSocketCtor | undefined
  private readonly fetch: FetchLike
  private cfg: WireConfig | undefined
  private ws: Socket | undefined
  /** The WebSocket is open. */
  private get open(): boolean {
    return this.ws?.opened === true
  }
  /** The HTTP transports below the WebSocket (SSE, long polling) and the steps between them. */
  private readonly ladder: Ladder
  private timer: ReturnType<typeof setTimeout> | undefined
  private readonly attempts: Attempts
  private closed = false
  private reported = false
  private reopening = false
  readonly tab: string
  private readonly collab: TabCollab
  /** Bumped by each start(): an await that comes back to a newer one gives up. */
  private gen = 0

  constructor(private readonly o: ClientOptions, private readonly tap?: Tap) {
    super()
    const g = globalThis as Globals
    this.WS = o.WebSocket ?? g.WebSocket
    const ES = o.EventSource === null ? undefined : o.EventSource ?? g.EventSource
    this.fetch = o.fetch ?? ((url, init) => g.fetch!(url, init))
    this.base = new URL(o.configUrl, g.location?.href).href
    this.ladder = new Ladder({
      ES,
      fetch: this.fetch,
      base: this.base,
      timing: o,
      topics: () => (this.handlers.size > 0 ? [...this.handlers.keys()] : this.collab.topics()),
      cursorOf: (topic) => this.cursors.get(topic),
      ticket: o.token === undefined ? undefined : () => this.ticket().then((t) => (this.closed ? null : t)),
      carrying: (t) => this.set('fallback', t),
      frame: (data) => this.frame(data),
      lost: () => this.set('offline'),
      holdOff: (ms) => this.holdOff(ms),
      // The page sees why the ladder stepped down, and which way (the ladder tells the server).
      stepped: (stepDown) => {
        if (stepDown.to === null) this.set('manual-refresh')
        this.diagnosed({ ...(this.diagnosis ?? { cause: 'unreachable' }), stepDown })
      },
      report: o.report !== false,
      signedOut: (reason) => this.signOut(reason),
      // A new HTTP session: presence and locks go there now (same tab: nothing flickers within the grace).
      session: (id) => (id === undefined ? this.collab.dropAsking('the connection changed') : !this.open && this.collab.rejoin()),
    })
    this.attempts = new Attempts({ ...BACKOFF, ...o.backoff })
    this.tab = tabId(g)
    // Presence and locks ride the WebSocket, or POST <path>/collab beside an HTTP transport.
    this.collab = new TabCollab(this.tab, (f, keepalive) => (this.open ? this.send(f) : this.ladder.post(f, keepalive)), () => this.open || this.ladder.session !== undefined)
    // Leaving the page: out of presence and locks at once, not after the grace.
    g.addEventListener?.('pagehide', this.onPagehide)
    // Back online: try now rather than at the end of a long backoff.
    g.addEventListener?.('online', this.onOnline)
    void this.start()
  }

  /** An HTTP transport exists (opening or open). */
  private get streaming(): boolean {
    return this.ladder.active
  }

  private readonly onPagehide = (): void => this.collab.farewell()
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
  cursorOf(topic: string): string | undefined { return this.cursors.get(topic) }

  /** Resume `topic` from `cursor` when it is subscribed (a connection taking over from another tab's). */
  seed(topic: string, cursor: string): void {
    if (!this.handlers.has(topic)) this.cursors.set(topic, cursor)
  }

  presence(topic: string, meta: unknown = null): Presence {
    // A tab with nothing subscribed (the shared client's own connection) has no HTTP transport yet: this topic opens one.
    if (this.handlers.size === 0 && !this.open && !this.streaming) this.restream()
    return this.collab.presence(topic, meta)
  }

  lock(key: string, options: { takeover?: boolean } = {}): Promise<HeldLock | RefusedLock> {
    return this.collab.lock(key, options)
  }

  reconnect(): void {
    if (this.closed) return
    this.attempts.reset()
    if (this.state === 'signed-out') this.set('connecting')
    // The server asked for a wait (`Retry-After`): the attempt comes when it is over.
    if (this.attempts.holding) return this.retry()
    void this.start()
  }

  close(): void {
    this.collab.farewell()
    this.collab.dropAsking('the client was closed')
    this.closed = true
    // A tab that leads, freezes and leads again makes a client each time: none may stay attached.
    const g = globalThis as Globals
    g.removeEventListener?.('pagehide', this.onPagehide)
    g.removeEventListener?.('online', this.onOnline)
    clearTimeout(this.timer)
    this.dropSocket()
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
      if (!this.streaming) this.set('offline')
      return this.retry()
    }
    if (this.closed || this.ws !== undefined || this.state === 'signed-out' || gen !== this.gen) return
    this.cfg = cfg
    const fallback = this.ladder.offer(cfg)
    if (cfg.webSocketEnabled && cfg.url !== undefined && this.WS !== undefined) return this.connect(cfg.url, gen)
    if (!cfg.webSocketEnabled) this.diagnose({ cause: 'disabled' }, false)
    if (fallback) {
      if (!this.streaming) this.stream()
      return this.retry() // the channel may come back: re-read config later
    }
    // Degraded mode: stay quiet, no connection attempts.
    this.closeStream()
    this.set('manual-refresh')
  }

  private async connect(path: string, gen: number): Promise<void> {
    const nonce = randomId(globalThis as Globals, 22)
    const url = new URL(path, this.base)
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:'
    url.searchParams.set('nonce', nonce)
    if (this.o.token !== undefined) {
      const ticket = await this.ticket()
      if (ticket === null || this.closed || this.ws !== undefined || gen !== this.gen) return
      url.searchParams.set('ticket', ticket)
    }
    // The first subscriptions ride on the handshake (no round trip after
    // opening). Not while the event stream still delivers: its cursors move
    // until the socket opens and the stream is closed, and only then are they read.
    const early = this.cfg?.handshakeTopics === true && !this.streaming ? handshakeTopics(url, [...this.handlers.keys()], this.cursors) : new Set<string>()
    const ws = new Socket(this.WS!, url.href, {
      open: () => {
        this.attempts.reset()
        // Close the stream before reading cursors: nothing arrives from it
        // after this, and the socket resumes every topic from there.
        this.closeStream()
        this.set('live', 'websocket')
        this.diagnose(null, false)
        for (const topic of this.handlers.keys()) if (!early.has(topic)) this.sub(topic)
        // Dropped while the handshake was on its way: the server subscribed it anyway.
        for (const topic of early) if (!this.handlers.has(topic)) this.send({ op: 'unsubscribe', topic })
        this.collab.rejoin()
      },
      frame: (data) => this.frame(data),
      close: (e) => {
        if (this.ws !== ws) return
        this.ws = undefined
        if (this.closed) return
        this.collab.dropAsking('the WebSocket closed')
        if (!e.opened) return this.failed(nonce)
        if (e.code === SESSION_ENDED) return this.signOut(e.reason || 'session ended')
        if (e.code === DISABLED) return void this.start()
        this.set('connecting')
        this.retry()
      },
    }, { openTimeoutMs: this.o.openTimeoutMs ?? 10_000, heartbeatMs: this.cfg?.heartbeatMs ?? 25_000, heartbeatTimeoutMs: this.o.heartbeatTimeoutMs ?? 10_000 })
    this.ws = ws
  }

  /** The WebSocket did not open: fall back at once, ask the server why, probe again later. */
  private failed(nonce: string): void {
    if (!this.ladder.offered) this.set('offline')
    else if (!this.streaming) this.stream()
    void this.ask(nonce)
    this.retry()
  }

  private retry(): void {
    clearTimeout(this.timer)
    this.timer = setTimeout(() => void this.start(), this.attempts.next())
  }

  /** The server asked for `ms` before the next attempt (`Retry-After`): see Attempts. */
  private holdOff(ms: number): void {
    if (this.attempts.holdOff(ms)) this.retry()
  }

  /** Forget the socket without waiting for its close handshake. */
  private dropSocket(): void {
    this.ws?.drop()
    this.ws = undefined
  }

  // ---- HTTP transports (fallback.ts) ----

  /** (Re)open the HTTP transport for the current topics, resuming each from its cursor. */
  private stream(): void {
    if (!this.closed) this.ladder.start()
  }

  /** The session is over: stop every transport and timer until `reconnect()`. */
  private signOut(reason: string): void {
    if (this.closed) return
    clearTimeout(this.timer)
    this.dropSocket()
    this.closeStream()
    const was = this.state
    this.set('signed-out')
    if (was !== 'signed-out') this.emit('signed-out', { reason })
  }

  private closeStream(): void { this.ladder.close() }
  /**
   * Trade the app's token for a one-time ticket. `null` when there is none:
   * signed out (no token, or a 401), or a failure that was left to the retry loop.
   */
  private async ticket(): Promise<string | null> {
    const r = await fetchTicket(this.fetch, new URL('ticket', this.base).href, this.o.token!)
    if ('ticket' in r) return r.ticket
    if ('signedOut' in r) this.signOut(r.signedOut)
    else if (!this.closed && this.state !== 'signed-out') {
      if (!this.streaming) this.set('offline')
      this.retry()
    }
    return null
  }

  /** Topics changed while streaming: reopen once, after the caller's loop of subscribes. */
  private restream(): void {
    if (this.reopening || (!this.streaming && this.state !== 'fallback')) return
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
    this.ws?.send(frame)
  }

  private frame(text: unknown): void {
    let f: WireFrame
    try {
      // Long polling hands over parsed frames; the WebSocket and SSE, text.
      f = (typeof text === 'object' && text !== null ? text : JSON.parse(String(text))) as WireFrame
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
        const present = this.collab.withdraw(f.topic)
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
      case 'error':
        this.collab.refused(f)
        return this.emit('error', f.topic === undefined ? { code: f.code, message: f.message } : { code: f.code, message: f.message, topic: f.topic })
      default:
        this.collab.frame(f)
    }
  }

  // ---- diagnosis ----

  /** Ask the server what it saw for this handshake's nonce. */
  private async ask(nonce: string): Promise<void> {
    const { diagnosis: d, retryAfterMs } = await askHandshake(this.fetch, new URL(`${this.cfg!.url!}/diagnostics?nonce=${nonce}`, this.base).href)
    if (this.closed || this.open) return
    if (retryAfterMs !== undefined) {
      // A stream not yet open would be refused the same way: wait it out. One that carries events stays.
      if (!this.ladder.open) {
        this.closeStream()
        this.set('offline')
      }
      this.holdOff(retryAfterMs)
    }
    this.diagnose(d, true, nonce)
    // A 401 will not change by retrying: wait for `reconnect()` after sign-in.
    if (d.cause === 'unauthenticated') this.signOut('unauthenticated')
  }

  /** `nonce`: the handshake the diagnosis is about, so the server counts what it saw itself. */
  private diagnose(d: Diagnosis | null, report: boolean, nonce?: string): void {
    this.diagnosed(d)
    if (!report || d === null || this.reported || this.o.report === false || d.cause === 'offline') return
    this.reported = true
    reportDiagnosis(this.fetch, new URL(`${this.cfg!.url!}/diagnostics`, this.base).href, d, this.ladder.transport ?? 'none', nonce)
  }
}

