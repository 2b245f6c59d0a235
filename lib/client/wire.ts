/**
 * What the browser client and the server agree on: the single source of the
 * wire protocol's names and frames. No DOM or Node types, so both sides
 * import it (the server's `types.ts` pulls in `node:http`, which the browser
 * build must never see).
 */

export const PROTOCOL = 'cms-realtime.v1'

/** The client's view of `GET <path>/config` (the server's `ClientConfig`). */
export interface WireConfig {
  webSocketEnabled: boolean
  /** WebSocket path; present when enabled. */
  url?: string
  protocol: string
  heartbeatMs?: number
  /** The server subscribes the topics named on the upgrade URL (`?topics=&since=`). */
  handshakeTopics?: boolean
  mode?: 'manual-refresh' | 'fallback'
  /** The SSE fallback, for clients before `transports`. */
  fallback: { transport: 'sse' | 'poll'; url: string } | null
  /** Every transport on offer, in order (servers before this field: only `fallback`). */
  transports?: WireTransport[]
}

export type WireTransport =
  | { transport: 'websocket'; url: string; heartbeatMs: number }
  | { transport: 'sse'; url: string; heartbeatMs: number }
  | { transport: 'poll'; url: string; holdMs: number }

/**
 * Why a client stepped down from an HTTP transport to the next one:
 * - `buffering_proxy`: the event stream opened no first frame, or lost its
 *   heartbeat, within its time: something on the way holds streamed
 *   responses (a compressing or buffering proxy, an antivirus HTTPS scanner);
 * - `stream_failed`: the stream kept failing without ever delivering;
 * - `poll_failed`: long polls do not complete either (then: manual refresh).
 */
export type StepDownCause = 'buffering_proxy' | 'stream_failed' | 'poll_failed'

export const STEP_DOWN_CAUSES: readonly StepDownCause[] = ['buffering_proxy', 'stream_failed', 'poll_failed']

/** Frames a client sends. */
export type ClientFrame =
  | { op: 'subscribe'; topic: string; since?: string }
  | { op: 'unsubscribe'; topic: string }
  | { op: 'ping' }
  /** Be present on `topic` (join, or update `meta`) as the tab `tab`. */
  | { op: 'presence'; topic: string; tab: string; meta?: unknown }
  /** No longer present on `topic` (the tab closed or navigated away): at once, no grace. */
  | { op: 'leave'; topic: string }
  /** Ask for the soft lock on `key` (a topic) for the tab `tab`; `takeover` takes it from its holder. */
  | { op: 'lock'; key: string; tab: string; takeover?: boolean }
  | { op: 'unlock'; key: string }

/** `not_holder`: an `unlock` of a lock another tab holds (nothing was released). */
export type ErrorCode = 'forbidden' | 'bad_request' | 'unknown_op' | 'too_large' | 'rate_limited' | 'unavailable' | 'not_holder'

/** Someone present on a topic: one per tab. `user` is the server's id for the user; `info` what the server's `profile(user)` says. */
export interface PresenceMember {
  user: string
  tab: string
  meta: unknown
  info?: unknown
}

/** Who holds a soft lock, since when (epoch ms). */
export interface LockHolder {
  user: string
  tab: string
  since: number
  info?: unknown
}

/** Frames the server sends, over the WebSocket and as SSE `data`. */
export type ServerFrame =
  /**
   * `cursor`: the position the subscription starts at; a client that has
   * seen no event yet sends it as `since` when it resubscribes.
   */
  | { op: 'subscribed'; topic: string; cursor?: string; recovered?: boolean }
  /** `reason: 'forbidden'`: the server dropped the subscription (`rt.reauthorize`); without a reason it answers an unsubscribe. */
  | { op: 'unsubscribed'; topic: string; reason?: 'forbidden' }
  /**
   * SSE only, the stream's last frame: the server ended it. `code` is the
   * WebSocket close code it stands for (4401: the session ended, sign in again).
   */
  | { op: 'closed'; code: number; reason: string }
  | { op: 'event'; topic: string; id: string; type: string; data: unknown }
  | { op: 'resync'; topic: string }
  | { op: 'pong' }
  | { op: 'error'; code: ErrorCode; message: string; topic?: string }
  /** The presence on `topic` was accepted; `user` is this connection's user id (to tell "you, in another tab"). */
  | { op: 'present'; topic: string; user: string; tab: string }
  /** Everyone present on `topic` now, and who holds its lock: sent on every change to every present tab. */
  | { op: 'presence'; topic: string; members: PresenceMember[]; lock: LockHolder | null }
  /** The answer to `lock`: `held`, or `refused` with the holder. */
  | { op: 'lock'; key: string; result: 'held' } | { op: 'lock'; key: string; result: 'refused'; holder: LockHolder }
  /** This tab no longer holds `key`: taken over (`by` says who), or released by the server. */
  | { op: 'lock-lost'; key: string; by: LockHolder | null }
  | { op: 'unlocked'; key: string }

/**
 * What the client reads: a server frame, where a newer server may send
 * error codes this client does not know yet.
 */
export type WireFrame =
  | Exclude<ServerFrame, { op: 'error' }>
  | { op: 'error'; code: ErrorCode | (string & {}); message: string; topic?: string }

/**
 * Why the WebSocket is not in use, as the client concludes it:
 * - `disabled`: config says the channel is off;
 * - `stripped_upgrade`: the handshake reached the server as a plain GET (a proxy dropped the upgrade);
 * - `unauthenticated`, `origin`: the server refused the handshake for that reason;
 * - `refused`: refused for another reason (see `detail`);
 * - `interrupted`: the server accepted the handshake but the browser never saw it open;
 * - `unreachable`: the handshake never reached the server (a firewall or proxy ate it);
 * - `offline`: the server could not be asked at all.
 */
export type DiagnosisCause =
  | 'disabled'
  | 'stripped_upgrade'
  | 'unauthenticated'
  | 'origin'
  | 'refused'
  | 'interrupted'
  | 'unreachable'
  | 'offline'

export const DIAGNOSIS_CAUSES: readonly DiagnosisCause[] = [
  'disabled', 'stripped_upgrade', 'unauthenticated', 'origin', 'refused', 'interrupted', 'unreachable', 'offline',
]

/** What the server saw for a handshake nonce (`GET <path>/diagnostics?nonce=`). */
export type HandshakeSeen =
  | { seen: 'stripped_upgrade' }
  /** `retryAfterMs`: the server asked for that long before the next attempt (`Retry-After`, as past `maxConnections`). */
  | { seen: 'refused'; reason: string; status: number; retryAfterMs?: number }
  | { seen: 'accepted' }
  | { seen: 'nothing' }

/** The diagnosis a handshake's record stands for: the one mapping, for the client's conclusion and the server's count. */
export function causeOf(s: HandshakeSeen): DiagnosisCause {
  if (s.seen === 'refused') return s.reason === 'unauthenticated' || s.reason === 'origin' || s.reason === 'disabled' ? s.reason : 'refused'
  return s.seen === 'stripped_upgrade' ? 'stripped_upgrade' : s.seen === 'accepted' ? 'interrupted' : 'unreachable'
}

/** Nonces the client puts on the WebSocket URL: 16-64 URL-safe characters. */
export const NONCE = /^[A-Za-z0-9_-]{16,64}$/
