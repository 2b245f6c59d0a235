/**
 * The plain-HTTP side of the channel, framework-neutral: a request in, a
 * reply out (status, headers, body) that each adapter writes its own way.
 *   <path>          a GET that should have been an upgrade → 426
 *   <path>/config   what the browser UI should do
 */
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http'
import debug from 'debug'
import { hasToken } from './handshake'
import type { HandshakeSeen } from '../client/wire'
import { PROTOCOL, type ClientConfig, type FallbackTransport, type TransportInfo } from '../types'

const log = debug('cms-realtime')

export interface Reply {
  status: number
  headers: Record<string, string>
  body: string
}

export interface RouteState {
  path: string
  webSocketEnabled: boolean
  heartbeatMs: number
  /** Transports offered when the WebSocket fails or is disabled, in order. */
  fallback: readonly FallbackTransport[]
  pollHoldMs: number
  /**
   * A GET on the WebSocket path that should have been an upgrade, and what it
   * was (for the nonce diagnosis); `client` keys per-client limits.
   */
  sawPlainGet?(req: IncomingMessage, client: string, seen: HandshakeSeen): void
  /** Count a refusal; `stripped` marks a proxy that dropped the upgrade. */
  refuse(reason: 'stripped_upgrade' | 'plain_request' | 'not_found' | 'bad_method' | 'not_attached'): void
}

const NO_STORE = { 'Cache-Control': 'no-store' }

/** Path part of a request target, without query. */
export function pathnameOf(url: string | undefined): string {
  if (url === undefined) return '/'
  const q = url.indexOf('?')
  return q < 0 ? url : url.slice(0, q)
}

/** Does `pathname` belong to the channel at `path`? */
export function isOurs(pathname: string, path: string): boolean {
  return pathname === path || (pathname.startsWith(path) && pathname.charCodeAt(path.length) === 47 /* / */)
}

let warnedStripped = false

/** Answer a request whose pathname `isOurs`. */
export function route(req: IncomingMessage, pathname: string, state: RouteState, client = req.socket.remoteAddress ?? ''): Reply {
  const sub = pathname.slice(state.path.length)
  const method = req.method ?? 'GET'
  const readOnly = method === 'GET' || method === 'HEAD'
  if (sub === '' || sub === '/') {
    if (!readOnly) return methodNotAllowed(state, 'GET')
    return upgradeRequired(req, state, client)
  }
  if (sub === '/config') {
    if (!readOnly) return methodNotAllowed(state, 'GET, HEAD')
    return json(200, config(state), NO_STORE)
  }
  state.refuse('not_found')
  return json(404, { error: 'not_found', reason: `no such cms-realtime route: ${pathname}` }, NO_STORE)
}

export function config(state: Pick<RouteState, 'path' | 'webSocketEnabled' | 'heartbeatMs' | 'fallback' | 'pollHoldMs'>): ClientConfig {
  // `fallback` stays for clients that read only it: the SSE stream, or nothing (they know no long polling).
  const fallback = state.fallback.includes('sse') ? { transport: 'sse' as const, url: `${state.path}/events` } : null
  const transports: TransportInfo[] = state.fallback.map((t): TransportInfo => t === 'sse'
    ? { transport: 'sse', url: `${state.path}/events`, heartbeatMs: state.heartbeatMs }
    : { transport: 'poll', url: `${state.path}/poll`, holdMs: state.pollHoldMs })
  if (!state.webSocketEnabled) {
    return { webSocketEnabled: false, mode: transports.length === 0 ? 'manual-refresh' : 'fallback', protocol: PROTOCOL, fallback, transports }
  }
  transports.unshift({ transport: 'websocket', url: state.path, heartbeatMs: state.heartbeatMs })
  return { webSocketEnabled: true, url: state.path, protocol: PROTOCOL, heartbeatMs: state.heartbeatMs, fallback, transports, handshakeTopics: true }
}

/**
 * A GET on the WebSocket path that is not an upgrade. If it carries
 * WebSocket headers (Sec-WebSocket-Key/-Version, or `Upgrade: websocket`
 * without `Connection: upgrade`), a browser asked for a WebSocket and
 * something in between removed the hop-by-hop upgrade headers: the classic
 * WebSocket-unaware proxy. Answering the app's usual 200 here is what makes
 * browsers fail with a bare 1006, so we say 426 and why (RFC 9110 §15.5.22:
 * a 426 carries `Upgrade`).
 */
function upgradeRequired(req: IncomingMessage, state: RouteState, client: string): Reply {
  const h = req.headers
  if (hasToken(h.connection, 'upgrade') && typeof h.upgrade === 'string' && h.upgrade.trim().toLowerCase() === 'websocket') {
    // A whole upgrade reaches the request listeners only when the server had
    // no 'upgrade' listener: cms-realtime was not attached yet (no `server`
    // option, and no request came first to attach it lazily). No proxy is to
    // blame; the middleware has attached itself now, so a retry works.
    state.refuse('not_attached')
    state.sawPlainGet?.(req, client, { seen: 'refused', reason: 'not_attached', status: 503 })
    log('an upgrade for %s arrived before cms-realtime was attached to this server: pass `server` or call rt.attach(server) at startup', state.path)
    return json(503, {
      error: 'not_attached',
      reason: 'cms-realtime was not yet attached to this server when the handshake arrived (pass `server` in the options, ' +
        'or call rt.attach(server) at startup); it is attached now: retry',
    }, { ...NO_STORE, 'Retry-After': '0' })
  }
  const stripped =
    h['sec-websocket-key'] !== undefined ||
    h['sec-websocket-version'] !== undefined ||
    (typeof h.upgrade === 'string' && h.upgrade.toLowerCase() === 'websocket')
  // Upgrade is hop-by-hop, so it is named in Connection (RFC 9110 §7.8); and
  // `close`, because this connection will not be upgraded.
  const headers = { ...NO_STORE, Upgrade: 'websocket', Connection: 'Upgrade, close' }
  if (stripped) {
    // Only a request that carries WebSocket headers is recorded for its
    // nonce: a bare GET with a made-up nonce must not evict real records.
    state.sawPlainGet?.(req, client, { seen: 'stripped_upgrade' })
    state.refuse('stripped_upgrade')
    if (!warnedStripped) {
      warnedStripped = true
      log(
        'a WebSocket handshake for %s arrived without its upgrade (from %s, via %s): a proxy in between drops the ' +
          'Upgrade/Connection headers. nginx needs: proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; ' +
          'proxy_set_header Connection "upgrade". Counted in stats().strippedUpgrades; logged once.',
        state.path,
        req.socket.remoteAddress,
        h.via ?? h['x-forwarded-for'] ?? 'no Via header',
      )
    }
    return json(426, {
      error: 'upgrade_required',
      cause: 'stripped_upgrade',
      reason:
        'the WebSocket handshake reached the server without its Upgrade/Connection headers: a proxy or firewall ' +
        'between the browser and the server does not pass WebSockets through. Use the fallback transport, or ' +
        'configure the proxy to forward upgrades.',
    }, headers)
  }
  state.refuse('plain_request')
  return json(426, {
    error: 'upgrade_required',
    cause: 'plain_request',
    reason: 'this is the cms-realtime WebSocket endpoint: connect with a WebSocket client (subprotocol ' +
      `${PROTOCOL}); GET ${state.path}/config tells a browser how`,
  }, headers)
}

function methodNotAllowed(state: RouteState, allow: string): Reply {
  state.refuse('bad_method')
  return json(405, { error: 'method_not_allowed', reason: `use ${allow}` }, { ...NO_STORE, Allow: allow })
}

/** Write a JSON answer (never cached) on a raw response: the one way every route answers. */
export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const reply = json(status, body, { ...headers, ...NO_STORE })
  // The phrase named explicitly: the app's own auth (Strapi's ctx.unauthorized)
  // may have set one on `res` while we awaited `authenticate`.
  res.writeHead(reply.status, STATUS_CODES[reply.status] ?? '', reply.headers).end(reply.body)
}

/** Bodies are always given; the HTTP layer drops them for HEAD. */
function json(status: number, body: unknown, headers: Record<string, string>): Reply {
  const text = JSON.stringify(body)
  return {
    status,
    headers: { ...headers, 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': String(Buffer.byteLength(text)) },
    body: text,
  }
}
