/**
 * The browser client's public types: what a page sees (state, events,
 * presence, locks) and the structural transports Node tests inject (`ws`,
 * `eventsource`, `fetch`). No DOM types, so the client builds anywhere.
 */
import type { BackoffOptions } from './backoff'
import type { DiagnosisCause, LockHolder, PresenceMember, StepDownCause } from './wire'

export type { LockHolder, PresenceMember, StepDownCause } from './wire'

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
  /** An `AbortSignal`: a long poll abandoned past its hold. */
  signal?: AbortSignal
}) => Promise<{ ok: boolean; status: number; json(): Promise<unknown>; headers?: { get(name: string): string | null } }>

/**
 * - `connecting`: reading config or opening the WebSocket;
 * - `live`: the WebSocket is open;
 * - `fallback`: events come over Server-Sent Events or long polling (`transport` says which; the transports above are retried in the background);
 * - `manual-refresh`: nothing pushes (the server says so, or not even long polls complete: `diagnosis.stepDown`); the UI should offer a refresh button;
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
  /**
   * Below the WebSocket, the ladder stepped down from `from` to `to`
   * (`null`: nothing is left, state `manual-refresh`) because of `cause`;
   * see `StepDownCause` and docs/proxies.md for what to change on the way.
   */
  stepDown?: { from: 'sse' | 'poll'; to: 'sse' | 'poll' | null; cause: StepDownCause }
}

/** What carries the events now. */
export type Transport = 'websocket' | 'sse' | 'poll'

export interface ClientEvents {
  state: ClientState
  /** History could not cover a gap on this topic: refetch its data. */
  resync: string
  /** Why the WebSocket is not in use (`null` once it is live again). */
  diagnosis: Diagnosis | null
  /** What carries the events changed (`null`: nothing does now). */
  transport: Transport | null
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
  /** An event stream that shows no first frame after this long is held by the network: step down to long polling. Default 5000. */
  firstFrameTimeoutMs?: number
  /** First wait before a held event stream is tried again in the background (it doubles, up to 5 min). Default 15000. */
  streamProbeMs?: number
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
  /** What carries the events: the WebSocket when `live`, SSE or long polling when `fallback`, else `null`. */
  readonly transport: Transport | null
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

/**
 * What a tab sharing its connection needs to see of the connection it
 * leads (`shared.ts`): cursors that do not come with an event, and
 * subscriptions the server withdrew.
 */
export interface Tap {
  cursor(topic: string, cursor: string): void
  withdrawn(topic: string): void
}
