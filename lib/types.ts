/**
 * The single source of cms-realtime's public types. Everything here is
 * framework-neutral: the Koa and Express adapters only choose `Ctx`.
 */
import type { CollabStore } from './collab/store'
import type { LockHolder } from './client/wire'
import type { IncomingMessage, Server as HttpServer } from 'node:http'
import type { Server as HttpsServer } from 'node:https'
import { PROTOCOL, type DiagnosisCause, type StepDownCause } from './client/wire'

/** `PROTOCOL`: the subprotocol name, also the wire-format version. */
export { PROTOCOL, type DiagnosisCause, type StepDownCause }

export type MaybePromise<T> = T | Promise<T>

/** An HTTP(S) server whose `upgrade` event we can listen to. */
export type AttachableServer = HttpServer | HttpsServer

/**
 * Who is on the other end. Whatever `authenticate` returns; `null` means
 * "no user" (anonymous, allowed only when no `authenticate` is configured).
 */
export type User = unknown

/** What the server tells the browser UI at `GET <path>/config`. */
export type ClientConfig =
  | {
      webSocketEnabled: true
      url: string
      protocol: typeof PROTOCOL
      heartbeatMs: number
      /** The SSE fallback, for clients before `transports`; `null` when SSE is not on offer. */
      fallback: FallbackInfo | null
      /** Every transport on offer, in order: the WebSocket, then the fallbacks. */
      transports: TransportInfo[]
      /** The upgrade URL may name the first subscriptions: `?topics=a,b&since=<cursors>` (no round trip after connecting). */
      handshakeTopics: true
    }
  | {
      webSocketEnabled: false
      /** `manual-refresh`: nothing will push; `fallback`: use `fallback`. */
      mode: 'manual-refresh' | 'fallback'
      protocol: typeof PROTOCOL
      fallback: FallbackInfo | null
      transports: TransportInfo[]
    }

export interface FallbackInfo {
  transport: 'sse' | 'poll'
  url: string
}

/** The HTTP transports a browser steps down to when the WebSocket does not get through. */
export type FallbackTransport = 'sse' | 'poll'

/** One transport on offer, in `GET <path>/config`'s `transports`, in the order the client tries them. */
export type TransportInfo =
  | { transport: 'websocket'; url: string; heartbeatMs: number }
  /** `heartbeatMs`: the stream's heartbeat; a stream that misses it is held by the network. */
  | { transport: 'sse'; url: string; heartbeatMs: number }
  /** `holdMs`: the longest a poll is held; one not answered well after it cannot complete. */
  | { transport: 'poll'; url: string; holdMs: number }

/**
 * `U` is the type of your users: inferred from what `authenticate` returns,
 * so `authorize`, `revalidate` and selectors receive it typed.
 */
export interface RealtimeOptions<Ctx = IncomingMessage, U = User> {
  /** Server to attach to now. Default: none (call `attach`, or let the middleware attach lazily). */
  server?: AttachableServer
  /**
   * Absolute request path of the channel as the Node server sees it, mount
   * prefix included (e.g. `/cms/realtime`). Default `/realtime`.
   */
  path?: string
  /**
   * Accept WebSocket upgrades. Default `true`; the environment variable
   * `CMS_REALTIME_WEBSOCKETS_ENABLED=false|0|off|no` overrides it.
   */
  webSocketEnabled?: boolean
  /**
   * Who is this? Called once per connection (at the WebSocket handshake, or
   * per fallback request) with the framework's context after the app's own
   * middleware ran, so a session loaded there is visible. Return a user, or
   * `null`/`undefined`/`false` to refuse with 401. Default: everyone is anonymous.
   */
  authenticate?: (ctx: Ctx) => MaybePromise<U | null | undefined | false>
  /**
   * May `user` subscribe to `topic`? Default: every topic except
   * `notifications:<id>`, which only the user whose id is `<id>` may read.
   */
  authorize?: (user: U, topic: string) => MaybePromise<boolean>
  /**
   * Origins allowed to open a socket besides the same origin. Strings are
   * full origins (`https://cms.example.com`); `'*'` allows any. Default: same origin only.
   */
  allowedOrigins?: readonly string[] | '*' | ((origin: string, req: IncomingMessage) => boolean)
  /**
   * Hostnames the channel answers to (the `Host` header, or the forwarded
   * host behind a trusted proxy), against DNS rebinding: a page on the
   * attacker's name that re-resolves to your server is same-origin with
   * itself, so the Origin check alone passes it. `'.example.com'` allows
   * the domain and every subdomain; IP addresses and `localhost` are always
   * allowed (no rebinding yields them). Others get 403 `host_not_allowed`,
   * on the upgrade and on every route under `path`. Default: any host.
   */
  allowedHosts?: readonly string[]
  /** Refuse handshakes and fallback requests that carry no `Origin` (non-browser clients). Default `false`. */
  requireOrigin?: boolean
  /**
   * Believe `Forwarded` / `X-Forwarded-Host` / `X-Forwarded-For` (for the
   * same-origin check and per-client limits). Default: what the framework
   * says (Koa `app.proxy`, Express `trust proxy`); `false` for the bare core.
   * Only set it when every request comes through a proxy you run.
   */
  trustProxy?: boolean
  /**
   * Largest frame accepted from a client, in bytes; larger closes with 1009.
   * Default 4096: the largest legal frame (a subscribe with a 200-character
   * topic and a cursor) is about 300 bytes.
   */
  maxPayload?: number
  /**
   * WebSocket connections plus SSE streams one user (by `userId(user)`) may
   * hold at once; past it → 429 `too_many_connections`. Anonymous users are
   * not counted. Default 32 (an editor with many tabs stays well below).
   */
  maxConnectionsPerUser?: number
  /**
   * WebSocket connections plus fallback streams this process holds at once,
   * every user and transport together; past it → 503 `over_capacity` with a
   * jittered `Retry-After` (5-10 s), which the browser client waits out.
   * Default 10000: keep it under the process's file-descriptor limit. There
   * is deliberately no per-address cap: whole editorial teams share one NAT.
   */
  maxConnections?: number
  /**
   * Is this user's session still valid? Called every `revalidateMs` for each
   * open connection and stream; `false` ends it (close 4401, SSE `closed`
   * frame). A throw keeps the connection and is retried next round (logged,
   * counted in `stats().errors`), so a database blip does not sign everyone out.
   */
  revalidate?: (user: U) => MaybePromise<boolean>
  /** Interval of `revalidate`. Default 60000. */
  revalidateMs?: number
  /** Topics one connection may hold at once. Default 100. */
  maxTopicsPerConnection?: number
  /** Longest topic name. Default 200. */
  maxTopicLength?: number
  /** Bytes queued to one client before it is closed as a slow consumer (1013). Default 1 MiB. */
  maxBufferedBytes?: number
  /** Client messages per second before `rate_limited` errors. Default 50. */
  maxMessagesPerSecond?: number
  /** Protocol errors a connection may cause before it is closed with 1008. Default 10. */
  maxProtocolErrors?: number
  /** Server ping interval; a peer that misses one pong is terminated. Default 25000. */
  heartbeatMs?: number
  /**
   * How long an upgrade for a path that is not ours may stay unanswered when
   * other `upgrade` listeners exist, before it gets 404. Default 10000.
   */
  unclaimedUpgradeTimeoutMs?: number
  /** Longest time the app's middleware may take to pass an upgrade on. Default 10000. */
  handshakeTimeoutMs?: number
  /** Where the event bus lives. Default: in-memory (one process). */
  bus?: Bus
  /**
   * Transports offered to browsers whose WebSocket fails (a proxy strips the
   * upgrade), in the order they step down: `'sse'` serves Server-Sent
   * Events at `<path>/events`, `'poll'` long polling at `<path>/poll`.
   * Default `['sse', 'poll']`. `'sse'` alone is `['sse']`; `'none'` offers nothing.
   */
  fallback?: readonly FallbackTransport[] | 'sse' | 'poll' | 'none'
  /** Longest a long poll is held before it is answered empty. Default 25000 (under common proxy read timeouts). */
  pollHoldMs?: number
  /**
   * Keep the fallback transport when `webSocketEnabled` is false. Default
   * `false`: switching the channel off means manual refresh, as with
   * Optimizely's `UIOptions.WebSocketEnabled`; an operator who disables
   * WebSockets only because a proxy cannot carry them sets this to `true`.
   */
  fallbackWhenDisabled?: boolean
  /**
   * Key for connection tickets (`POST <path>/ticket`, for browsers whose
   * credential is a bearer token; see the README). Give every node the same
   * secret so a ticket minted on one is redeemed on another. Default: a
   * random key per process (a ticket works on the node that minted it).
   */
  ticketSecret?: string | Uint8Array
  /** How long a ticket may wait before it is used. Default 30000. */
  ticketTtlMs?: number
  /** Presence and soft locks: timings and hooks. */
  collab?: CollabOptions<U>
}

/**
 * One published event as stored and delivered. `data` is the JSON text of
 * the payload: `publish` serialises it once, and every transport and node
 * reuses that text.
 */
export interface BusEvent {
  topic: string
  /** Cursor, increasing per topic. Opaque to clients. */
  id: string
  type: string
  /** JSON text of the payload. */
  data: string
}

/** What `publish` resolves to. */
export interface Published {
  topic: string
  id: string
  type: string
}

/**
 * The seam between one node and the others (in the spirit of
 * socket.io-adapter): the memory bus is the default, the Redis bus spans
 * machines. A node subscribes only to the topics its clients hold.
 */
export interface Bus {
  /**
   * Assign the cursor, keep the event in history and deliver it to every
   * node subscribed to the topic. A bus that can answer at once returns the
   * event itself: a bulk import then costs no promise callback per event.
   */
  publish(topic: string, type: string, data: string): MaybePromise<BusEvent>
  /** Start receiving events of `topic` on this node. */
  subscribe(topic: string): MaybePromise<void>
  unsubscribe(topic: string): MaybePromise<void>
  /** Set the receiver of events of subscribed topics, from this node and others, in per-topic order. */
  onEvent(listener: (event: BusEvent) => void): void
  /**
   * Events after cursor `since`, oldest first; `null` when history no longer
   * reaches back to `since` or the cursor is not one of ours (the client must refetch).
   */
  history(topic: string, since: string): Promise<BusEvent[] | null>
  /**
   * Optional: set the receiver of "history has a hole on `topic`" (events
   * this node's clients can never receive, e.g. a node delivered them only
   * locally during a Redis outage). Every local subscriber is sent `resync`.
   */
  onResync?(listener: (topic: string) => void): void
  /** A cursor for "now" on `topic`: `history(topic, latest)` later returns what came after. */
  latest(topic: string): Promise<string>
  close(): Promise<void>
  /** Optional: counters and health, shown as `rt.stats().bus` (the Redis bus: connected, timeouts, fills, resyncs, …). */
  stats?(): object
  /**
   * Optional: where presence and soft locks live so every node shares them
   * (the Redis bus: in Redis). Without it they live in this process.
   */
  collabStore?(): CollabStore
}

/** Presence and soft locks (see the README, "Presence and soft locks"). */
export interface CollabOptions<U = User> {
  /** How long a tab whose socket dropped still shows as present (a reload, a blip). Default 3000. */
  leaveGraceMs?: number
  /** How long a tab whose socket dropped keeps its locks, for it to reconnect and take them back. Default 15000. */
  lockGraceMs?: number
  /** Lease of every presence entry and lock in the store, renewed every third of it: a crashed node's lapse within it. Default 30000. */
  leaseMs?: number
  /** May `user` lock `key` (a topic it may read)? Default: yes. */
  canLock?: (user: U, key: string) => MaybePromise<boolean>
  /** May `user` take `key` over from `holder`? Default: yes (the holder is told at once). */
  canTakeOver?: (user: U, key: string, holder: LockHolder) => MaybePromise<boolean>
  /** What others see of a present user besides its id (a name, an avatar URL): small, public. Default: nothing. */
  profile?: (user: U) => unknown
}

/** Why a handshake or request was refused; the keys of `stats().refusals`. */
export type RefusalReason =
  | 'bad_method'
  | 'bad_upgrade'
  | 'bad_connection'
  | 'bad_version'
  | 'bad_key'
  | 'missing_host'
  | 'bad_subprotocol'
  | 'origin'
  | 'unauthenticated'
  | 'disabled'
  | 'not_found'
  | 'timeout'
  | 'shutting_down'
  | 'app_response'
  | 'stripped_upgrade'
  | 'plain_request'
  | 'pipelined_upgrade'
  | 'pipelined_request'
  | 'bad_http_version'
  | 'bad_host'
  | 'bad_handshake'
  | 'too_many_connections'
  | 'forbidden'
  | 'internal_error'
  | 'not_attached'
  | 'over_capacity'
  | 'request_body'
  | 'host_not_allowed'

export interface RealtimeStats {
  connections: number
  /** Sum over connections of their topics. */
  subscriptions: number
  topics: number
  eventsPublished: number
  eventsDelivered: number
  /** Clients closed for falling behind (send buffer over `maxBufferedBytes`). */
  slowConsumersClosed: number
  /** Frames not sent because the client was already closing. */
  drops: number
  protocolErrors: number
  refusals: Partial<Record<RefusalReason, number>>
  /** Plain GETs on the WebSocket path that carried WebSocket headers: a proxy dropped the upgrade. */
  strippedUpgrades: number
  webSocketEnabled: boolean
  /** Open fallback (SSE) streams: editors whose WebSocket does not get through. */
  fallbackStreams: number
  /** Clients on each transport now: WebSocket connections, SSE streams, long polls held (a poller between two polls is not counted for those milliseconds). */
  transports: { websocket: number; sse: number; poll: number }
  /**
   * Why browsers stepped down from one HTTP transport to the next (a held
   * stream: `buffering_proxy`), as they reported it. The server cannot
   * vouch for these (it saw its frames leave, not whether they arrived);
   * they share the unconfirmed reports' rate limit per address.
   */
  stepDowns: Partial<Record<StepDownCause, number>>
  /**
   * Diagnoses browsers reported (`POST <path>/diagnostics`) that the server's
   * own record of the failed handshake confirms, by the cause it saw: one per
   * handshake, whatever anyone else posts.
   */
  diagnoses: Partial<Record<DiagnosisCause, number>>
  /** Reports the server cannot vouch for (the handshake never reached it, or an older client), by the cause they claim. */
  diagnosesUnconfirmed: Partial<Record<DiagnosisCause, number>>
  /** Reports refused as malformed, without `Origin`, or over the rate limit. */
  diagnosesRejected: number
  /** Exceptions caught from user callbacks (`authenticate`, `authorize`, `allowedOrigins`, `revalidate`), the bus and our own listeners: logged, never fatal. */
  errors: number
  /** Connections and streams ended by `disconnect`, `revalidate` or `expiresAt`. */
  sessionsEnded: number
  /** Subscriptions dropped by `reauthorize`. */
  subscriptionsRevoked: number
  /** Subscriptions that came back with a cursor (a reconnect): resumed from history exactly, or told to `resync`. */
  recovery: { recovered: number; resynced: number }
  /** What the bus reports about itself, if it does (the Redis bus: `RedisBusStats`). */
  bus?: object
}

/**
 * Which connections `rt.disconnect` / `rt.reauthorize` act on: one user's
 * (by `userId(user)`: `user.id`, or the user itself when it is a string or a
 * number), those holding a topic, those whose user has given field values,
 * or those whose user matches a predicate. Every selector but a predicate
 * also acts on the other nodes sharing the bus.
 */
export type ConnectionSelector<U = User> =
  | { user: string | number }
  | { topic: string }
  /**
   * Users whose fields have these values (an array: any of them), e.g.
   * `{ match: { sessionId: ['s1', 's2'] } }`: data, so unlike a function it
   * reaches other nodes too.
   */
  | { match: Record<string, string | number | boolean | ReadonlyArray<string | number | boolean>> }
  | ((user: U) => boolean)
