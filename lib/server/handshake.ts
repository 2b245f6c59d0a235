/**
 * Handshake validation, as a pure function of the request, so every row of
 * the README's handshake table is one table-driven test. RFC 6455 §4.2.1
 * lists what a server must check; §4.4 says an unsupported version gets 426
 * with the versions we speak. `ws` alone would accept version 8 and, on a
 * missing Host, answer 101; we do neither.
 */
import type { IncomingMessage } from 'node:http'
import { STATUS_CODES } from 'node:http'
import type { Duplex } from 'node:stream'
import { PROTOCOL, type RefusalReason } from '../types'

export interface Refusal {
  status: number
  reason: RefusalReason
  message: string
  headers?: Record<string, string>
}

/** Base64 of 16 bytes: 22 significant characters and `==` (RFC 6455 §4.1). */
const KEY = /^[+/0-9A-Za-z]{22}==$/

/** Does a comma-separated header list contain `token` (case-insensitive)? */
export function hasToken(header: string | string[] | undefined, token: string): boolean {
  if (header === undefined) return false
  const list = Array.isArray(header) ? header.join(',') : header
  return list.split(',').some((t) => t.trim().toLowerCase() === token)
}

/**
 * Check an upgrade request for our path. Returns `null` to proceed, or the
 * refusal to write. Origin and authentication come later (they need options
 * and the app's middleware); this is only what HTTP and RFC 6455 demand.
 */
export function checkUpgrade(
  req: Pick<IncomingMessage, 'method' | 'headers'> & Partial<Pick<IncomingMessage, 'httpVersion' | 'rawHeaders'>>,
  enabled: boolean,
): Refusal | null {
  const h = req.headers
  if (!enabled) {
    return { status: 503, reason: 'disabled', message: 'the WebSocket channel is disabled on this server; see GET <path>/config' }
  }
  if (req.method !== 'GET') {
    return { status: 400, reason: 'bad_method', message: 'a WebSocket handshake must use GET' }
  }
  // RFC 6455 §4.1: "HTTP/1.1 or higher"; an HTTP/1.0 proxy cannot carry it.
  if (req.httpVersion !== undefined && req.httpVersion !== '1.1') {
    return { status: 400, reason: 'bad_http_version', message: 'a WebSocket handshake must be HTTP/1.1' }
  }
  if (typeof h.upgrade !== 'string' || h.upgrade.trim().toLowerCase() !== 'websocket') {
    return { status: 400, reason: 'bad_upgrade', message: 'the Upgrade header must be "websocket"' }
  }
  if (!hasToken(h.connection, 'upgrade')) {
    return { status: 400, reason: 'bad_connection', message: 'the Connection header must list "upgrade"' }
  }
  if (!h.host) {
    return { status: 400, reason: 'missing_host', message: 'the Host header is required' }
  }
  // Node keeps the first Host and drops the rest; which one a proxy or the
  // Origin check would believe is anyone's guess (RFC 9112 §3.2: 400).
  if (req.rawHeaders !== undefined && countHeader(req.rawHeaders, 'host') > 1) {
    return { status: 400, reason: 'bad_host', message: 'exactly one Host header is allowed' }
  }
  // A GET handshake has no body (RFC 6455 §4.1). One that declares a body is
  // how request smuggling looks: a proxy that frames the request by one of
  // these headers and a server that frames it by the other disagree on
  // where the next request starts. Browsers never send them.
  if (h['content-length'] !== undefined || h['transfer-encoding'] !== undefined) {
    return {
      status: 400, reason: 'request_body',
      message: 'a WebSocket handshake carries no body: Content-Length and Transfer-Encoding are refused',
    }
  }
  if (h['sec-websocket-version'] !== '13') {
    return {
      status: 426,
      reason: 'bad_version',
      message: 'only WebSocket version 13 (RFC 6455) is supported',
      headers: { 'Sec-WebSocket-Version': '13' },
    }
  }
  const key = h['sec-websocket-key']
  if (typeof key !== 'string' || !KEY.test(key.trim())) {
    return { status: 400, reason: 'bad_key', message: 'Sec-WebSocket-Key must be 16 random bytes in base64' }
  }
  const offered = h['sec-websocket-protocol']
  if (offered !== undefined) {
    // Validated here as `ws` would, so a malformed list gets our JSON answer
    // rather than `ws`'s plain-text one (Node joins a repeated header with ", ").
    const list = protocolList(offered)
    if (list === null) {
      return { status: 400, reason: 'bad_subprotocol', message: 'Sec-WebSocket-Protocol must be a comma-separated list of distinct tokens' }
    }
    if (!list.includes(PROTOCOL)) {
      return { status: 400, reason: 'bad_subprotocol', message: `the only subprotocol spoken here is ${PROTOCOL}` }
    }
  }
  return null
}

/** RFC 7230 token characters. */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/

/** The offered subprotocols, or `null` when the list is malformed (empty element, non-token, duplicate). */
function protocolList(header: string): string[] | null {
  const list = header.split(',').map((t) => t.trim())
  if (list.some((t) => !TOKEN.test(t)) || new Set(list).size !== list.length) return null
  return list
}

function countHeader(raw: readonly string[], name: string): number {
  let n = 0
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.toLowerCase() === name) n++
  return n
}

/** Write a complete HTTP response on a raw socket and close it: never leave a handshake hanging. */
export function writeRefusal(socket: Duplex, refusal: Refusal): void {
  if (socket.destroyed || !socket.writable) {
    socket.destroy()
    return
  }
  const body = JSON.stringify({ error: refusal.reason, status: refusal.status, message: refusal.message })
  const headers: Record<string, string> = {
    Connection: 'close',
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': String(Buffer.byteLength(body)),
    'Cache-Control': 'no-store',
    ...refusal.headers,
  }
  const head = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('')
  socket.once('finish', () => socket.destroy())
  socket.end(`HTTP/1.1 ${refusal.status} ${STATUS_CODES[refusal.status] ?? ''}\r\n${head}\r\n${body}`)
}
