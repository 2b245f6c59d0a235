/**
 * One origin policy for every transport (the upgrade, `<path>/events`,
 * `POST <path>/diagnostics`): cross-site WebSocket hijacking and its SSE
 * twin are the same attack, since both ride on the CMS's session cookie.
 *
 * Same origin means the Origin's host:port equals the host the client
 * asked for: the `Host` header, or, only when the app trusts its proxy
 * (Koa `app.proxy`, Express `trust proxy`, or option `trustProxy`), the
 * first `Forwarded: host=` / `X-Forwarded-Host` value. The scheme is not
 * compared: behind a TLS-terminating proxy the server may not know it.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Refusal } from './handshake'

export type OriginPolicy = (origin: string, req: IncomingMessage) => boolean

/** Why an origin check failed; `threw` when the user's policy function threw (counted as an error). */
export type OriginVerdict = { ok: true; cors: string | undefined } | { ok: false; refusal: Refusal; threw?: unknown }

/**
 * Check `req`'s Origin. `cors` is the origin to echo in
 * `Access-Control-Allow-Origin` when the request is cross-origin but allowed.
 */
export function checkOrigin(req: IncomingMessage, allowed: OriginPolicy, requireOrigin: boolean, trustProxy: boolean): OriginVerdict {
  const origin = req.headers.origin
  if (origin === undefined) {
    return requireOrigin ? refuse('an Origin header is required') : { ok: true, cors: undefined }
  }
  if (sameOrigin(origin, requestHost(req, trustProxy))) return { ok: true, cors: undefined }
  let ok: boolean
  try {
    ok = allowed(origin, req) === true
  } catch (err) {
    // A policy like `(o) => new URL(o).hostname…` throws on `Origin: null`.
    return { ...refuse(`origin ${origin} is not allowed`), threw: err }
  }
  return ok ? { ok: true, cors: origin } : refuse(`origin ${origin} is not allowed`)
}

export type HostPolicy = ((hostname: string) => boolean) | undefined

/** `allowedHosts` as a predicate on the hostname (lower case, no port); `undefined` allows every host. */
export function hostPolicy(list: readonly string[] | undefined): HostPolicy {
  if (list === undefined) return undefined
  const exact = new Set<string>()
  const suffixes: string[] = []
  for (const h of list) {
    const v = h.trim().toLowerCase()
    if (v.startsWith('.')) suffixes.push(v)
    else exact.add(v)
  }
  return (hostname) =>
    exact.has(hostname) || suffixes.some((s) => hostname === s.slice(1) || hostname.endsWith(s))
}

/** The refusal for a request whose host `allowedHosts` does not list, or `null`. */
export function checkHost(req: IncomingMessage, policy: HostPolicy, trustProxy: boolean): Refusal | null {
  if (policy === undefined) return null
  const hostname = hostnameOf(requestHost(req, trustProxy))
  if (hostname !== '' && (isIp(hostname) || hostname === 'localhost' || policy(hostname))) return null
  return { status: 403, reason: 'host_not_allowed', message: `host ${JSON.stringify(hostname.slice(0, 100))} is not in allowedHosts` }
}

/** `cms.example.com:8080` → `cms.example.com`; `[::1]:80` → `::1`. */
function hostnameOf(host: string): string {
  const h = host.trim().toLowerCase()
  if (h.startsWith('[')) {
    const end = h.indexOf(']')
    return end < 0 ? '' : h.slice(1, end)
  }
  const colon = h.indexOf(':')
  return colon < 0 ? h : h.slice(0, colon)
}

function isIp(hostname: string): boolean {
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(hostname) || (hostname.includes(':') && /^[0-9a-f:.]+$/.test(hostname))
}

/** The host (with port) the client addressed, honouring a trusted proxy's forwarding headers. */
export function requestHost(req: IncomingMessage, trustProxy: boolean): string {
  if (trustProxy) {
    const forwarded = forwardedParam(req.headers.forwarded, 'host')
    if (forwarded !== undefined) return forwarded
    const xfh = firstValue(req.headers['x-forwarded-host'])
    if (xfh !== undefined) return xfh
  }
  return req.headers.host ?? ''
}

/**
 * The client's address for per-client limits: the socket's peer, or, behind a
 * trusted proxy, the last `X-Forwarded-For` hop (the one that proxy added; the
 * leftmost entries are whatever the client claimed).
 */
export function clientAddress(req: IncomingMessage, trustProxy: boolean): string {
  if (trustProxy) {
    const xff = req.headers['x-forwarded-for']
    const list = (Array.isArray(xff) ? xff.join(',') : xff ?? '').split(',').map((s) => s.trim()).filter((s) => s !== '')
    if (list.length > 0) return list[list.length - 1]!
  }
  return req.socket.remoteAddress ?? ''
}

const CORS_HEADERS = [
  'access-control-allow-origin', 'access-control-allow-credentials', 'access-control-allow-methods',
  'access-control-allow-headers', 'access-control-expose-headers', 'access-control-max-age',
]

/**
 * Our routes answer with our own CORS headers, never an app middleware's: an
 * origin-echoing, credentialed CORS middleware mounted before us would
 * otherwise let any site read a user's event stream.
 */
export function ownCors(res: ServerResponse, cors: string | undefined): void {
  if (res.headersSent) return
  for (const h of CORS_HEADERS) res.removeHeader(h)
  if (cors === undefined) return
  res.setHeader('Access-Control-Allow-Origin', cors)
  res.setHeader('Access-Control-Allow-Credentials', 'true')
  res.setHeader('Vary', 'Origin')
}

function sameOrigin(origin: string, host: string): boolean {
  let h: string
  try {
    h = new URL(origin).host
  } catch {
    return false
  }
  return h !== '' && h.toLowerCase() === host.toLowerCase()
}

function refuse(message: string): { ok: false; refusal: Refusal } {
  return { ok: false, refusal: { status: 403, reason: 'origin', message } }
}

function firstValue(header: string | string[] | undefined): string | undefined {
  const v = (Array.isArray(header) ? header[0] : header)?.split(',')[0]?.trim()
  return v === undefined || v === '' ? undefined : v
}

/** `param` of the first element of an RFC 7239 `Forwarded` header. */
function forwardedParam(header: string | undefined, param: string): string | undefined {
  const first = header?.split(',')[0]
  if (first === undefined) return undefined
  for (const pair of first.split(';')) {
    const eq = pair.indexOf('=')
    if (eq < 0 || pair.slice(0, eq).trim().toLowerCase() !== param) continue
    const v = pair.slice(eq + 1).trim().replace(/^"(.*)"$/, '$1')
    return v === '' ? undefined : v
  }
  return undefined
}
