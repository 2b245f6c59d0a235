/**
 * Wire protocol `cms-realtime.v1`: JSON text frames with an `op` field.
 * Parsing validates completely, so the rest of the server only ever sees
 * well-formed frames; anything else becomes an `error` frame, never a throw.
 */
import type { ClientFrame, ErrorCode, ServerFrame } from '../client/wire'
import type { BusEvent } from '../types'

export type { ClientFrame, ErrorCode, ServerFrame } from '../client/wire'

export type ParseResult =
  | { ok: true; frame: ClientFrame }
  | { ok: false; code: ErrorCode; message: string; topic?: string }

/** Topic names: printable, no spaces, so they are safe in URLs, logs and Redis keys. */
const TOPIC = /^[A-Za-z0-9_.:\-/@]+$/

/** Topics of the library's own (`cms-realtime:…`, the nodes' control topic): never a client's, whatever `authorize` says. */
export function reserved(topic: string): boolean {
  return topic.startsWith('cms-realtime:')
}

export function validTopic(topic: unknown, maxLength: number): topic is string {
  return typeof topic === 'string' && topic.length > 0 && topic.length <= maxLength && TOPIC.test(topic)
}

export function parseClientFrame(text: string, maxTopicLength: number): ParseResult {
  let msg: unknown
  try {
    msg = JSON.parse(text)
  } catch {
    return { ok: false, code: 'bad_request', message: 'frame is not valid JSON' }
  }
  if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) {
    return { ok: false, code: 'bad_request', message: 'frame must be a JSON object' }
  }
  const { op, topic, since } = msg as Record<string, unknown>
  switch (op) {
    case 'ping':
      return { ok: true, frame: { op } }
    case 'presence':
    case 'leave':
    case 'lock':
    case 'unlock':
      return parseCollab(op, msg as Record<string, unknown>, maxTopicLength)
    case 'subscribe':
    case 'unsubscribe': {
      if (!validTopic(topic, maxTopicLength)) {
        return {
          ok: false,
          code: 'bad_request',
          message: `"topic" must be 1-${maxTopicLength} characters of A-Z a-z 0-9 _ . : - / @`,
          ...(typeof topic === 'string' ? { topic: topic.slice(0, maxTopicLength) } : {}),
        }
      }
      if (op === 'unsubscribe') return { ok: true, frame: { op, topic } }
      if (since !== undefined && (typeof since !== 'string' || since.length === 0 || since.length > 64)) {
        return { ok: false, code: 'bad_request', message: '"since" must be a cursor string', topic }
      }
      return { ok: true, frame: since === undefined ? { op, topic } : { op, topic, since } }
    }
    default:
      return {
        ok: false,
        code: typeof op === 'string' ? 'unknown_op' : 'bad_request',
        message: typeof op === 'string' ? `unknown op ${JSON.stringify(op.slice(0, 32))}` : 'frame needs an "op" string',
      }
  }
}

/** Tab ids: what the browser client makes (16-64 URL-safe characters). */
const TAB = /^[A-Za-z0-9_-]{8,64}$/
/** Presence metadata stays small: it is sent to everyone present on the topic at every change. */
export const MAX_META_BYTES = 512

function parseCollab(op: 'presence' | 'leave' | 'lock' | 'unlock', msg: Record<string, unknown>, maxTopicLength: number): ParseResult {
  const field = op === 'presence' || op === 'leave' ? 'topic' : 'key'
  const name = msg[field]
  if (!validTopic(name, maxTopicLength)) {
    return { ok: false, code: 'bad_request', message: `"${field}" must be 1-${maxTopicLength} characters of A-Z a-z 0-9 _ . : - / @` }
  }
  if (op === 'leave') return { ok: true, frame: { op, topic: name } }
  if (op === 'unlock') return { ok: true, frame: { op, key: name } }
  const tab = msg.tab
  if (typeof tab !== 'string' || !TAB.test(tab)) {
    return { ok: false, code: 'bad_request', message: '"tab" must be 8-64 characters of A-Z a-z 0-9 _ -', topic: name }
  }
  if (op === 'lock') {
    if (msg.takeover !== undefined && typeof msg.takeover !== 'boolean') return { ok: false, code: 'bad_request', message: '"takeover" must be a boolean', topic: name }
    return { ok: true, frame: msg.takeover === true ? { op, key: name, tab, takeover: true } : { op, key: name, tab } }
  }
  const meta = msg.meta ?? null
  if (JSON.stringify(meta).length > MAX_META_BYTES) {
    return { ok: false, code: 'too_large', message: `"meta" must be at most ${MAX_META_BYTES} bytes of JSON`, topic: name }
  }
  return { ok: true, frame: { op, topic: name, tab, meta } }
}

export function encode(frame: ServerFrame): string {
  return JSON.stringify(frame)
}

/**
 * One event, serialised once for every recipient (as a Buffer, so `ws` does
 * not re-encode the string per client).
 */
export function encodeEvent(event: BusEvent): Buffer {
  // `data` is already JSON text (serialised once by publish): splice it in.
  return Buffer.from(
    `{"op":"event","topic":${JSON.stringify(event.topic)},"id":${JSON.stringify(event.id)},` +
      `"type":${JSON.stringify(event.type)},"data":${event.data}}`,
  )
}

/**
 * Complete, unmasked WebSocket text frames (RFC 6455 §5.2) for `payloads`,
 * back to back in one buffer: the connection writes them to its socket in
 * one call. Still one frame per event; only the TCP write is shared.
 */
export function wsTextFrames(payloads: readonly Buffer[]): Buffer {
  let size = 0
  for (const p of payloads) size += p.length + (p.length < 126 ? 2 : p.length < 65536 ? 4 : 10)
  const out = Buffer.allocUnsafe(size)
  let at = 0
  for (const p of payloads) {
    out[at] = 0x81 // FIN + text
    if (p.length < 126) {
      out[at + 1] = p.length
      at += 2
    } else if (p.length < 65536) {
      out[at + 1] = 126
      out.writeUInt16BE(p.length, at + 2)
      at += 4
    } else {
      out[at + 1] = 127
      out.writeBigUInt64BE(BigInt(p.length), at + 2)
      at += 10
    }
    at += p.copy(out, at)
  }
  return out
}

/** Close codes the server uses (RFC 6455 §7.4.1 plus our 4xxx). */
export const CloseCode = {
  /** Server shutting down (`close()`): reconnect, maybe to another node. */
  GOING_AWAY: 1001,
  /** Repeated protocol abuse. */
  POLICY: 1008,
  /** A frame over `maxPayload`. */
  TOO_LARGE: 1009,
  /** Slow consumer: the send buffer passed `maxBufferedBytes`. Reconnect and recover. */
  TRY_AGAIN_LATER: 1013,
  /** The channel was switched off at run time: re-read config, do not retry the socket. */
  DISABLED: 4000,
  /**
   * The session ended (`rt.disconnect`, `revalidate`, `expiresAt`): sign in
   * again; retrying with the same credentials is pointless (4000 + HTTP 401).
   */
  SESSION_ENDED: 4401,
} as const
